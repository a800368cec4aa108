"""The tenancy of one gateway, put together from its settings: the tenant
book (keys and terms), the ledger (budgets, usage log, per-tenant metrics)
and the reload on SIGHUP."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from prometheus_client import CollectorRegistry

from app.config import Settings
from app.observability.tenant_metrics import TenantMetrics
from app.tenancy.ledger import Ledger, UsageLog
from app.tenancy.quota import open_store
from app.tenancy.tenants import Tenant, TenantBook, TenantsFileError, load_keys

logger = logging.getLogger(__name__)


def _priorities(tenants: list[Tenant], settings: Settings) -> list[int]:
    """The priority values that get their own label (bounded by the file)."""
    values = {0, settings.reserve_priority, settings.priority_floor}
    for t in tenants:
        values |= {t.default_priority, t.min_priority}
    return sorted(values)


@dataclass
class Tenancy:
    book: TenantBook
    ledger: Ledger | None  # None: no tenants file and no usage log (nothing on the path)
    metrics: TenantMetrics | None
    settings: Settings

    def hangup(self, quiet: bool = False) -> None:
        """SIGHUP: reload what is reloadable; say so when nothing is (unless
        `quiet`: something else reloads)."""
        usage_log = self.ledger.usage_log if self.ledger is not None else None
        if usage_log is not None:
            usage_log.reopen()  # after logrotate's rename
        if self.settings.tenants_file is not None:
            self.reload()
        elif usage_log is None and not quiet:
            logger.info("SIGHUP: nothing to reload (no GATEWAY_TENANTS_FILE)")

    def reload(self) -> None:
        """Read the tenants file again, or keep the old book."""
        try:
            self.book.reload()
        except Exception as exc:  # TenantsFileError; anything else is a defect, still one line
            why = exc if isinstance(exc, TenantsFileError) else f"{type(exc).__name__}: {exc}"
            logger.error("tenants file not reloaded, the previous one stays: %s", why)
            if self.metrics is not None:
                self.metrics.reloads.labels(self.metrics.model, "refused").inc()
            return
        if self.ledger is not None:
            self.ledger.set_tenants(self.book.names, _priorities(self.book.tenants, self.settings))
        if self.metrics is not None:
            self.metrics.reloads.labels(self.metrics.model, "ok").inc()
        logger.info("tenants file reloaded: %d tenants", len(self.book.tenants))


def build_tenancy(settings: Settings, registry: CollectorRegistry) -> Tenancy:
    """Raises TenantsFileError for a bad tenants file (OSError for an
    unreadable key file)."""
    plain = load_keys(settings.api_keys, settings.api_key_file)
    admins = load_keys(settings.admin_keys, None)
    book = TenantBook(settings.tenants_file, plain, settings.priority_floor, admins)
    if settings.tenants_file is not None and not book.tenants:
        logger.warning(
            "the tenants file %s names nobody yet: every /v1 request needs a key%s",
            settings.tenants_file,
            " from GATEWAY_API_KEYS" if plain else "; none will pass until a reload adds one",
        )
    if settings.tenants_file is None and settings.usage_log is None:
        return Tenancy(book, None, None, settings)
    priorities = _priorities(book.tenants, settings)
    metrics = TenantMetrics(registry, settings.model_name)
    store = None
    if settings.tenants_file is not None:
        store = open_store(
            settings.quota_store,
            fail_open=settings.quota_fail == "open",
            on_state=lambda up: metrics.store_up.set(1 if up else 0),
        )
    usage_log = (
        UsageLog(settings.usage_log, metrics.usage_log_errors.inc) if settings.usage_log else None
    )
    ledger = Ledger(metrics, store, usage_log, book.names, priorities)
    return Tenancy(book, ledger, metrics, settings)

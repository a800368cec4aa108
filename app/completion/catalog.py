"""The model ids a request may name: the served model's (its name and
GATEWAY_SERVED_MODEL_NAME's aliases) and its task adapters', as far as the
caller's tenant may use them. An id that is unknown and one the tenant may
not use get the same 404, so names cannot be probed."""

from __future__ import annotations

from dataclasses import dataclass

from app.adapters.registry import NOT_FOUND, Adapter, Adapters
from app.completion.prepared import ServedModel
from app.errors import ModelNotFound
from app.tenancy.tenants import Tenant


@dataclass(frozen=True, slots=True)
class Listed:
    """One id as /v1/models shows it: `root` is what it serves, `parent` the
    base model an adapter was trained on."""

    id: str
    root: str
    parent: str | None


# What a model id resolves to: the name answers carry, and the adapter (None: the base model).
Target = tuple[str, Adapter | None]


@dataclass
class Catalog:
    model: ServedModel
    adapters: Adapters | None = None

    def resolve(self, requested: str | None, tenant: Tenant | None) -> Target:
        """The id's target, or a 404."""
        adapter = None
        if requested is None or requested in self.model.names:
            name = self.model.name
        elif self.adapters is not None and (adapter := self.adapters.find(requested)):
            name = adapter.name
        else:
            raise self._not_found(tenant)
        if tenant is not None and not tenant.may_use(requested or name, name):
            raise self._not_found(tenant)
        return name, adapter

    def _not_found(self, tenant: Tenant | None) -> ModelNotFound:
        """A caller who may use every model is told the served names; one
        limited to some learns nothing it could probe with."""
        if tenant is not None and tenant.models is not None:
            return ModelNotFound(NOT_FOUND, param="model")
        served = ", ".join(f"'{n}'" for n in self.model.names)
        more = " and its task adapters (GET /v1/models)" if self.adapters is not None else ""
        return ModelNotFound(
            f"The model does not exist; this gateway serves {served}{more}.", param="model"
        )

    def listing(self, tenant: Tenant | None) -> list[Listed]:
        base = self.model.name
        out = [Listed(n, base, None) for n in self.model.names]
        if self.adapters is not None:
            named = self.adapters.by_name
            out += [Listed(n, n, base) for n in sorted(named)]
            out += [Listed(f, a.name, base) for f, a in sorted(self.adapters.aliases.items())]
        if tenant is None:
            return out
        return [e for e in out if tenant.may_use(e.id, e.root)]

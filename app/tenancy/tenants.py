"""The tenants file (GATEWAY_TENANTS_FILE): who may call, under which name,
with which limits, priority and fair share; keys plain or as SHA-256 digests.
GATEWAY_API_KEYS / GATEWAY_API_KEY_FILE keys are unnamed tenants with no
limits. `TenantBook.reload()` (on SIGHUP) swaps the whole book or keeps the
old one: a bad file is refused with one line naming the entry and field."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field, replace
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

# The label every caller without a name in the file shares (bounded labels).
UNNAMED = "default"
_DIGEST_PREFIX = "sha256:"


class TenantsFileError(ValueError):
    """One line: the file, the entry and the field."""


class _Entry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]
    keys: Annotated[list[str], Field(min_length=1)]
    tokens_per_minute: Annotated[int, Field(ge=1)] | None = None
    tokens_per_day: Annotated[int, Field(ge=1)] | None = None
    requests_per_minute: Annotated[int, Field(ge=1)] | None = None
    max_concurrent: Annotated[int, Field(ge=1)] | None = None
    default_priority: int = 0
    min_priority: int = 0
    weight: Annotated[float, Field(ge=0.001, le=1000)] = 1.0
    # The model ids it may use (base and adapters; * ? [] globs); none: all.
    models: Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1)] | None = None
    admin: bool = False  # may call the admin endpoints (load/unload adapters)

    @model_validator(mode="after")
    def _consistent(self) -> _Entry:
        if self.default_priority < self.min_priority:
            raise ValueError("default_priority is more urgent than min_priority allows")
        for key in self.keys:
            if key.startswith(_DIGEST_PREFIX):
                hexpart = key[len(_DIGEST_PREFIX) :]
                if len(hexpart) != 64 or any(c not in "0123456789abcdefABCDEF" for c in hexpart):
                    raise ValueError("a sha256: key needs 64 hex digits")
            elif not key.strip():
                raise ValueError("an empty key")
        return self


class _File(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tenants: list[_Entry]


@dataclass(frozen=True, slots=True, eq=False)
class Tenant:
    """A caller's identity and terms. `identity` partitions the prefix cache."""

    name: str
    identity: bytes
    tokens_per_minute: int | None = None
    tokens_per_day: int | None = None
    requests_per_minute: int | None = None
    max_concurrent: int | None = None
    default_priority: int = 0
    min_priority: int = 0
    weight: float = 1.0
    named: bool = False  # from the tenants file (its name is a metric label)
    share: float | None = None  # its part of the queue: weight / every caller's weights
    models: tuple[str, ...] | None = None  # globs of the model ids it may use; None: all
    admin: bool = False

    def may_use(self, *names: str) -> bool:
        """Whether any of a model's names (as asked, as served) is one it may use."""
        patterns = self.models
        return patterns is None or any(fnmatchcase(n, p) for n in names for p in patterns)

    @property
    def limited(self) -> bool:
        return any(
            v is not None
            for v in (
                self.tokens_per_minute,
                self.tokens_per_day,
                self.requests_per_minute,
                self.max_concurrent,
            )
        )

    def priority(self, asked: int | None) -> int:
        """The effective priority: asked, clamped to min_priority, or the default."""
        if asked is None:
            return self.default_priority
        return max(asked, self.min_priority)


def key_digest(key: str | bytes) -> bytes:
    """What a key is known by: the SHA-256 of the key as clients send it
    (surrounding blanks ignored). A file's `sha256:<hex>` entry is one already."""
    if isinstance(key, str):
        if key.startswith(_DIGEST_PREFIX):
            return bytes.fromhex(key[len(_DIGEST_PREFIX) :])
        key = key.encode()
    return hashlib.sha256(key.strip()).digest()


def load_keys(keys: list[str], key_file: Path | None) -> list[bytes]:
    """Digests of the plain keys (GATEWAY_API_KEYS, and one per line of
    GATEWAY_API_KEY_FILE; `#` starts a comment line)."""
    raw = [k.strip() for k in keys]
    if key_file is not None:
        raw += [line.strip() for line in key_file.read_text().splitlines()]
    return [key_digest(k.encode()) for k in raw if k and not k.startswith("#")]


def _where(loc: tuple[Any, ...], entries: list[Any]) -> str:
    """`tenants[1] (search).tokens_per_minute` from a pydantic error location."""
    parts: list[str] = []
    for i, item in enumerate(loc):
        if isinstance(item, int) and parts:
            parts[-1] += f"[{item}]"
            if i == 1 and item < len(entries) and isinstance(entries[item], dict):
                name = entries[item].get("name")
                if isinstance(name, str):
                    parts[-1] += f" ({name})"
        else:
            parts.append(str(item))
    return ".".join(parts) or "the file"


def parse_tenants(
    text: str | bytes, source: str = "tenants file"
) -> list[tuple[Tenant, list[bytes]]]:
    """Each tenant with its keys' digests; TenantsFileError (one line) for
    any bad file, whatever is wrong with it."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise TenantsFileError(f"{source}: not UTF-8 (byte {exc.start})") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        raise TenantsFileError(f"{source}: not valid YAML{at}") from None
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:
        # A scalar YAML resolves but Python cannot build (a timestamp such as
        # 2024-13-45), or nesting deeper than the parser's stack.
        raise TenantsFileError(f"{source}: not valid YAML ({type(exc).__name__})") from None
    try:
        parsed = _File.model_validate(raw)
    except ValidationError as exc:
        error = exc.errors()[0]
        entries = raw.get("tenants", []) if isinstance(raw, dict) else []
        where = _where(error["loc"], entries if isinstance(entries, list) else [])
        msg = str(error["msg"]).splitlines()[0] if error["msg"] else "invalid"
        raise TenantsFileError(f"{source}: {where}: {msg}") from None
    except RecursionError:
        raise TenantsFileError(f"{source}: nested too deeply") from None
    seen_names: set[str] = set()
    seen_keys: set[bytes] = set()
    out: list[tuple[Tenant, list[bytes]]] = []
    for i, e in enumerate(parsed.tenants):
        if e.name in seen_names or e.name == UNNAMED:
            raise TenantsFileError(
                f"{source}: tenants[{i}] ({e.name}).name: used twice, or reserved"
            )
        seen_names.add(e.name)
        digests = [key_digest(k) for k in e.keys]
        for d in digests:
            if d in seen_keys:
                raise TenantsFileError(
                    f"{source}: tenants[{i}] ({e.name}).keys: a key another entry has"
                )
            seen_keys.add(d)
        tenant = Tenant(
            name=e.name,
            identity=b"tenant:" + e.name.encode(),
            tokens_per_minute=e.tokens_per_minute,
            tokens_per_day=e.tokens_per_day,
            requests_per_minute=e.requests_per_minute,
            max_concurrent=e.max_concurrent,
            default_priority=e.default_priority,
            min_priority=e.min_priority,
            weight=e.weight,
            named=True,
            models=tuple(e.models) if e.models is not None else None,
            admin=e.admin,
        )
        out.append((tenant, digests))
    return out


@dataclass
class TenantBook:
    """Key digest -> tenant, for the file's tenants and the plain keys."""

    file: Path | None = None
    plain: list[bytes] = field(default_factory=list)  # GATEWAY_API_KEYS digests
    floor: int = 0  # the most urgent priority of the plain keys
    admins: list[bytes] = field(default_factory=list)  # GATEWAY_ADMIN_KEYS digests
    _pairs: list[tuple[bytes, Tenant]] = field(default_factory=list)
    tenants: list[Tenant] = field(default_factory=list)  # the file's, in its order

    def __post_init__(self) -> None:
        self.reload()

    @property
    def configured(self) -> bool:
        """A tenants file (even with nobody in it yet) or any key: every
        /v1 route needs a key, whatever a reload brings."""
        return self.file is not None or bool(self.plain) or bool(self.admins)

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.tenants]

    def reload(self) -> None:
        """Read the file again; on any error keep the book as it was and raise."""
        named: list[tuple[Tenant, list[bytes]]] = []
        if self.file is not None:
            try:
                text = self.file.read_bytes()
            except OSError as exc:
                raise TenantsFileError(f"{self.file}: cannot be read ({exc.strerror})") from None
            named = parse_tenants(text, str(self.file))
        # The queue is shared by weight among the file's tenants and (as one
        # flow of weight 1) the plain keys.
        total = sum(t.weight for t, _ in named) + (1.0 if self.plain else 0.0)
        share = 1.0 / total if self.file is not None and total else None
        named = [(replace(t, share=t.weight / total), ds) for t, ds in named]
        pairs = [(d, t) for t, digests in named for d in digests]
        taken = {d for d, _ in pairs}
        unnamed = Tenant(
            name=UNNAMED, identity=b"", default_priority=self.floor, min_priority=self.floor,
            share=share,
        )  # fmt: skip
        admins = set(self.admins)
        for d in self.plain:
            if d not in taken:
                pairs.append((d, replace(unnamed, identity=d, admin=d in admins)))
        for d in admins - taken - set(self.plain):  # an admin key alone: no completions
            pairs.append((d, replace(unnamed, identity=d, models=(), admin=True)))
        self._pairs = pairs
        self.tenants = [t for t, _ in named]

    def by_owner(self, owner: str) -> Tenant | None:
        """The tenant whose identity is `owner` (hex; "" without keys), if it is still here."""
        if not owner:
            return None
        identity = bytes.fromhex(owner)
        return next((t for _, t in self._pairs if t.identity == identity), None)

    def lookup(self, token: bytes) -> Tenant | None:
        """The tenant whose key `token` is, or None. Compares against every
        key, always, so timing says nothing about which matched."""
        digest = key_digest(token)
        matched = None
        for known, tenant in self._pairs:
            if hmac.compare_digest(digest, known):
                matched = tenant
        return matched

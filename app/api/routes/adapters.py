"""The admin endpoints for task adapters, in vLLM's shapes (so its clients
work): POST /v1/load_lora_adapter and /v1/unload_lora_adapter. Admin keys
only (GATEWAY_ADMIN_KEYS, or `admin: true` in the tenants file)."""

from __future__ import annotations

from fastapi import APIRouter, Response
from pydantic import BaseModel, ConfigDict, Field

from app.adapters import admin
from app.adapters.registry import Adapters
from app.api.deps import CatalogDep, TenantDep
from app.errors import InvalidRequest, PermissionDenied
from app.tenancy.tenants import Tenant

router = APIRouter()


class LoadAdapter(BaseModel):
    model_config = ConfigDict(extra="ignore")
    lora_name: str = Field(min_length=1, max_length=80)
    lora_path: str = Field(min_length=1, max_length=4096)


class UnloadAdapter(BaseModel):
    model_config = ConfigDict(extra="ignore")
    lora_name: str = Field(min_length=1, max_length=80)
    lora_int_id: int | None = None  # vLLM's; the name is what counts here


def _admitted(tenant: Tenant | None, adapters: Adapters | None) -> tuple[Adapters, str]:
    if tenant is None or not tenant.admin:
        raise PermissionDenied("This endpoint needs an admin key (GATEWAY_ADMIN_KEYS).")
    if adapters is None:
        raise InvalidRequest(
            "Task adapters are off: set GATEWAY_LORA_DIR (and restart) to serve them."
        )
    return adapters, tenant.name if tenant.named else f"key {tenant.identity.hex()[:12]}"


@router.post("/v1/load_lora_adapter", response_model=None)
async def load_lora_adapter(body: LoadAdapter, catalog: CatalogDep, tenant: TenantDep) -> Response:
    """Load a task adapter: checked, written into GATEWAY_LORA_DIR, served at once."""
    adapters, who = _admitted(tenant, catalog.adapters)
    await admin.load(adapters, body.lora_name, body.lora_path, who)
    return Response(f"Success: LoRA adapter '{body.lora_name}' added successfully.")


@router.post("/v1/unload_lora_adapter", response_model=None)
async def unload_lora_adapter(
    body: UnloadAdapter, catalog: CatalogDep, tenant: TenantDep
) -> Response:
    """Unload a task adapter: out of GATEWAY_LORA_DIR now, out of the engine once drained."""
    adapters, who = _admitted(tenant, catalog.adapters)
    await admin.unload(adapters, body.lora_name, who)
    return Response(f"Success: LoRA adapter '{body.lora_name}' removed successfully.")

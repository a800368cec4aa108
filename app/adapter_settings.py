"""Task adapters' settings (`GATEWAY_LORA_*`, `GATEWAY_MAX_*LORA*`,
`GATEWAY_ADMIN_KEYS`), a part of app.config.Settings."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode


class AdapterSettings(BaseSettings):
    lora_dir: Path | None = Field(
        None,
        description="Directory of LoRA task adapters: each sub-directory a PEFT adapter "
        "(adapter_config.json + adapter_model.safetensors) served as the model id "
        "of its name; `name@N` is version N of `name`, and `name` the newest.",
    )
    lora_modules: Annotated[dict[str, Path], NoDecode] = Field(
        default_factory=dict,
        description="More adapters by name: name=path pairs (comma-separated, as vLLM's "
        "--lora-modules) or a JSON object.",
    )
    max_loras: int | None = Field(
        None, ge=1, description="Adapters on the device at once (default: the device profile's)."
    )
    max_cpu_loras: int | None = Field(
        None, ge=1, description="Adapters cached in host memory (default: the profile's)."
    )
    max_lora_rank: int | None = Field(
        None, ge=1, description="The highest adapter rank served (default: the profile's)."
    )
    lora_rescan: float = Field(
        30.0,
        ge=0,
        description="Seconds between looks at GATEWAY_LORA_DIR (SIGHUP and the admin "
        "endpoint look at once); 0: only then.",
    )
    lora_base_guard: bool = Field(
        True,
        description="While adapter requests are in the engine, run base-model requests "
        "through an all-zero adapter (and let an adapter request wait for base requests "
        "running without it), so that an engine whose LoRA kernels read a base request as "
        "the last adapter slot (vLLM's CPU ops, measured) cannot mix their outputs; it "
        "takes one more device and host slot.",
    )
    lora_base_guard_linger: float = Field(
        10.0,
        ge=0,
        description="Seconds base-model requests keep the zero adapter after the last "
        "adapter request ends (no flapping between adapter requests); base requests stay "
        "guarded while a guarded one is still in the engine.",
    )
    admin_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Keys that may call the admin endpoints (load/unload adapters): one, "
        "a comma-separated list, or a JSON list. Tenants-file entries may say admin: true.",
    )

    @field_validator("lora_modules", mode="before")
    @classmethod
    def _pairs(cls, value: Any) -> Any:
        if isinstance(value, str) and not value.lstrip().startswith("{"):
            pairs = [p.split("=", 1) for p in value.split(",") if p.strip()]
            if any(len(p) != 2 for p in pairs):
                raise ValueError("give name=path pairs (comma-separated) or a JSON object")
            return {k.strip(): v.strip() for k, v in pairs}
        return json.loads(value) if isinstance(value, str) else value

    @property
    def lora_enabled(self) -> bool:
        """Adapters are served (the engine is built with LoRA) only when some are configured."""
        return self.lora_dir is not None or bool(self.lora_modules)

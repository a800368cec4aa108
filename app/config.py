"""Settings: environment (`GATEWAY_*`) and CLI flags of the same names."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from app.adapter_settings import AdapterSettings
from app.batch_settings import BatchSettings

Device = Literal["auto", "cpu", "npu"]
Truncation = Literal["left", "error"]

# The most tokens one SSE event may carry (GATEWAY_STREAM_INTERVAL and the
# request's own stream_interval alike).
MAX_STREAM_INTERVAL = 1024

# The fixture built by `make fixture`; real deployments set GATEWAY_MODEL.
DEFAULT_MODEL = ".cache/models/tiny-mobilellama"


def _state_home() -> Path:  # XDG's, else ~/.local/state
    return Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")


class Settings(BatchSettings, AdapterSettings):
    """Every field is `GATEWAY_<NAME>` in the environment and `--<name>` on the CLI."""

    model_config = SettingsConfigDict(
        env_prefix="GATEWAY_",
        extra="ignore",
        cli_kebab_case=True,
        cli_implicit_flags=True,
        cli_prog_name="ascend-llm-gateway",
    )

    model: str = Field(DEFAULT_MODEL, description="Local model directory (no hub downloads).")
    served_model_name: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Model ids clients may send (one, a comma-separated list, or a JSON "
        "list; the first is the one answers name); default: the model directory's name.",
    )
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    device: Device = Field("auto", description="auto picks npu when torch_npu sees a device.")
    truncation: Truncation = Field(
        "left", description="Over-long prompts: keep BOS + newest tokens (left) or 400 (error)."
    )
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["text", "json"] = Field("text", description="json: one object per line.")

    # Access.
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Accepted Bearer keys: one key, a comma-separated list, or a JSON list.",
    )
    api_key_file: Path | None = Field(
        None, description="File with one API key per line (a mounted Kubernetes Secret)."
    )
    metrics_auth: bool = Field(False, description="Require an API key for /metrics too.")
    rate_limit_rpm: int = Field(
        0, ge=0, description="Requests per minute per API key (429 beyond); 0: no limit."
    )
    rate_limit_burst: int | None = Field(
        None, ge=1, description="Requests a key may send at once; default: 10 s of its rate."
    )

    # Tenants (app.tenancy).
    tenants_file: Path | None = Field(
        None, description="YAML file of tenants: keys, budgets, priority, weight (SIGHUP reloads)."
    )
    quota_store: str = Field(
        "memory", description="Budget counters: memory (this process) or redis://host:port/db."
    )
    quota_fail: Literal["open", "closed"] = Field(
        "open", description="Redis unreachable: serve on local counters (open) or 503 (closed)."
    )
    usage_log: str | None = Field(
        None, description="One JSON line per completion request: a file path, or - for stdout."
    )
    trace_content: bool = Field(
        False, description="Put prompts and outputs in trace spans (OTEL_* turn tracing on)."
    )
    priority_reserve: int = Field(
        0, ge=0, description="Engine places kept for requests of priority <= reserve_priority."
    )
    reserve_priority: int = Field(
        0, description="The least urgent priority that may take the reserved places."
    )
    default_min_priority: int | None = Field(
        None,
        description="Most urgent priority of unnamed keys and anonymous callers; "
        "default: reserve_priority + 1 (the reserve is for the tenants file's).",
    )

    # Limits and admission.
    max_inflight: int = Field(256, ge=1, description="Requests in the engine at once.")
    max_queue: int = Field(
        512, ge=0, description="Requests waiting for an in-flight place; beyond: 503."
    )
    max_queued_tokens: int = Field(
        1_048_576, ge=0, description="Prompt tokens waiting for a place; beyond: 503."
    )
    max_body_bytes: int = Field(1_048_576, ge=1024, description="Request body limit (413).")
    max_prompts: int = Field(64, ge=1, description="Prompts in one request (a list).")
    max_schema_bytes: int = Field(
        65_536,
        ge=64,
        description="Bytes of one output constraint (JSON schema, grammar, regex, choices) "
        "as JSON; beyond: 400.",
    )
    max_stop: int = Field(8, ge=0, description="Stop sequences per request.")
    max_stop_length: int = Field(256, ge=1, description="Characters per stop sequence.")
    max_header_bytes: int = Field(
        32_768, ge=1024, description="Bytes of request line + headers (431 beyond)."
    )
    max_headers: int = Field(100, ge=8, description="Header fields per request (431 beyond).")
    header_timeout: float = Field(
        10.0, gt=0, description="Seconds for a request's headers to arrive (408 and close)."
    )
    request_timeout: float | None = Field(
        600.0,
        gt=0,
        description="Total seconds a request may take, queue included; then its engine "
        "work is aborted (504, or an SSE error event). None: no deadline.",
    )
    sse_keepalive: float = Field(
        15.0,
        gt=0,
        description="Seconds between SSE comment lines on a stream that waits in the "
        "queue or between tokens, so proxies keep it open.",
    )
    stream_interval: int = Field(
        1,
        ge=1,
        le=MAX_STREAM_INTERVAL,
        description="At most this many tokens per SSE event after the first (always alone); "
        "fewer events cost the client and the gateway less CPU. Per request: stream_interval.",
    )
    cors_origins: list[str] = Field(
        default_factory=list, description="CORS origins allowed (JSON list); none = CORS off."
    )

    # Lifecycle.
    warmup: Literal["none", "minimal", "full"] = Field(
        "full",
        description="Generations before ready: none; batch 1; batch 1 + full batch + long prefill.",
    )
    drain_timeout: float = Field(
        30.0,
        ge=0,
        description="Seconds in-flight requests get after SIGTERM before they are aborted.",
    )
    drain_delay: float = Field(
        5.0,
        ge=0,
        description="Seconds after SIGTERM that the port stays open, ready answering 503 and "
        "every response `Connection: close`, so the endpoint leaves the Service and "
        "proxies stop reusing pooled connections before they are closed.",
    )
    keepalive_timeout: int = Field(
        120,
        ge=1,
        description="Seconds an idle keep-alive connection is kept open. Longer than "
        "clients' and proxies' idle pools (aiohttp 15, Go 90, nginx 60), so the client "
        "closes first and never sends on a connection the server is closing.",
    )
    exit_grace: float = Field(
        3.0, ge=0, description="Seconds health shows `failed` before the process exits non-zero."
    )
    watchdog_interval: float = Field(
        1.0, gt=0, description="Seconds between engine liveness checks."
    )
    stall_timeout: float = Field(
        120.0,
        gt=0,
        description="Seconds the engine may run requests without any output before the "
        "gateway calls it hung, fails and exits (see README for the arithmetic).",
    )
    canary_interval: float = Field(
        0.0,
        ge=0,
        description="Seconds idle before a 1-token canary generation checks the engine "
        "(it must finish within stall_timeout); 0: off.",
    )
    termination_grace: float | None = Field(
        None,
        gt=0,
        description="The pod's terminationGracePeriodSeconds, when known: the drain "
        "timeout must end before it.",
    )

    data_dir: Path = Field(
        default_factory=lambda: _state_home() / "ascend-llm-gateway",
        description="State: records of the engine's processes. Default: $XDG_STATE_HOME/...",
    )
    stale_engines: Literal["auto", "stop", "refuse"] = Field(
        "auto",
        description="A dead gateway's engine found at start: stop it or exit 2 (auto: "
        "stop on cpu, refuse on npu).",
    )

    chat_template: str | None = Field(
        None,
        description="Chat template for /v1/chat/completions: a shipped name (mobilellama-v1) "
        "or a Jinja file; default: the tokenizer's own, if any.",
    )

    # Engine arguments; None means "take the device profile's value, else vLLM's".
    dtype: str | None = None
    max_model_len: int | None = Field(None, ge=1, description="At most the model's own limit.")
    max_num_seqs: int | None = Field(None, ge=1)
    max_num_batched_tokens: int | None = Field(None, ge=1)
    gpu_memory_utilization: float | None = Field(None, gt=0, le=1)
    enforce_eager: bool | None = None
    enable_prefix_caching: bool | None = None
    enable_chunked_prefill: bool | None = None
    engine_args: dict[str, Any] = Field(
        default_factory=dict,
        description='JSON object of any other vLLM engine argument, e.g. {"seed": 1}.',
    )

    @field_validator("api_keys", "served_model_name", "admin_keys", mode="before")
    @classmethod
    def _split_list(cls, value: Any) -> Any:
        # vLLM's --api-key takes one key (and --served-model-name one or more
        # names): accept one, a comma list, or a JSON list.
        if not isinstance(value, str):
            return value
        text = value.strip()
        if text.startswith("["):
            try:
                return json.loads(text)
            except ValueError:
                raise ValueError(
                    "looks like a JSON list but is not valid JSON; give one value, "
                    "a comma-separated list, or a JSON list of strings"
                ) from None
        return [k.strip() for k in text.split(",") if k.strip()]

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if not (self.quota_store == "memory" or "://" in self.quota_store):
            raise ValueError(
                "GATEWAY_QUOTA_STORE is 'memory' or a Redis URL (redis://host:port/db)."
            )
        if self.rate_limit_rpm and not (self.api_keys or self.api_key_file or self.tenants_file):
            raise ValueError(
                "GATEWAY_RATE_LIMIT_RPM is set but no API keys are (GATEWAY_API_KEYS or "
                "GATEWAY_API_KEY_FILE): the limit is per key."
            )
        # What the process needs after the drain: engine shutdown and exit.
        margin = 5.0
        grace = self.termination_grace
        drain = max(self.drain_timeout, self.drain_delay)
        if grace is not None and drain + margin > grace:
            raise ValueError(
                f"GATEWAY_DRAIN_TIMEOUT ({self.drain_timeout:g} s; the drain lasts at least "
                f"GATEWAY_DRAIN_DELAY, {self.drain_delay:g} s) plus {margin:g} s to stop "
                f"the engine is longer than GATEWAY_TERMINATION_GRACE ({grace:g} s): the pod "
                "would be killed mid-drain. Lower the drain timeout or raise "
                "terminationGracePeriodSeconds."
            )
        return self

    @property
    def rate_limit_burst_or_default(self) -> int:
        """The burst a key may send at once: as set, else 10 s of its rate."""
        return self.rate_limit_burst or max(1, self.rate_limit_rpm // 6)

    @property
    def priority_floor(self) -> int:
        """The most urgent priority a caller without a tenants-file entry gets."""
        m = self.default_min_priority
        return self.reserve_priority + 1 if m is None else m

    @property
    def model_names(self) -> list[str]:
        """Every id the model is served under; the first is its name in answers."""
        return self.served_model_name or [Path(self.model).resolve().name]

    @property
    def model_name(self) -> str:
        return self.model_names[0]

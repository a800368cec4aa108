"""What is checked before anything heavy starts, each failure told in one
line that names the variable or flag, what was wrong and what is accepted
(never the value of a secret), with no traceback:

- the settings themselves (types, ranges, cross-field rules in app.config);
- the model's own context limit against GATEWAY_MAX_MODEL_LEN;
- VLLM_* variables in URI form (Kubernetes service links of a Service
  named `vllm`), which vLLM refuses when the engine starts;
- on `GATEWAY_DEVICE=npu`, the NPU preflight, before vLLM is imported;
- engine processes a dead gateway left running (app.engine.orphans): stopped
  with one line naming them, or refused (GATEWAY_STALE_ENGINES).
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from pydantic_settings import SettingsError

from app.completion.chat_template import SHIPPED
from app.config import Settings
from app.engine.orphans import find_stale, stop_stale
from app.engine.preflight import PreflightError, check_npu

logger = logging.getLogger(__name__)

USAGE_ERROR = 2  # a configuration the operator must fix (like argparse's)
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


class ConfigError(Exception):
    """One or more lines, each a complete message; exit code `code`."""

    def __init__(self, lines: list[str], code: int = USAGE_ERROR):
        super().__init__("\n".join(lines))
        self.lines = lines
        self.code = code


def _names(field: str) -> str:
    return f"GATEWAY_{field.upper()} / --{field.replace('_', '-')}"


def _describe(err: Mapping[str, Any]) -> str:
    loc = [str(p) for p in err.get("loc", ())]
    msg = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
    if not loc:  # a cross-field rule: its message names the settings itself
        return msg
    where = _names(loc[0]) + ("" if len(loc) == 1 else f" (at {'.'.join(loc[1:])})")
    return f"{where}: {msg}"


def load_settings(argv: list[str]) -> Settings:
    try:
        return Settings(_cli_parse_args=argv)
    except ValidationError as exc:
        raise ConfigError([_describe(e) for e in exc.errors()]) from None
    except SettingsError as exc:
        # A JSON-typed setting whose text is not JSON.
        found = re.search(r'field "(\w+)"', str(exc))
        field = found.group(1) if found else None
        what = _names(field) if field else "a setting"
        raise ConfigError([f"{what}: not valid JSON (a JSON list or object is expected)"]) from None


def model_max_len(model_dir: Path) -> int | None:
    """The model's own context length from its config.json, if readable."""
    try:
        config = json.loads((model_dir / "config.json").read_text())
    except (OSError, ValueError):
        return None
    for key in ("max_position_embeddings", "max_sequence_length", "seq_length"):
        if isinstance(config.get(key), int):
            return int(config[key])
    return None


def check_environment(settings: Settings, environ: Mapping[str, str]) -> None:
    lines = []
    for name in sorted(environ):
        if name.startswith("VLLM_") and _URI.match(environ[name]):
            lines.append(
                f"{name} holds a URI, which vLLM refuses: Kubernetes sets it for a Service "
                "named 'vllm' in the namespace (service links). Set enableServiceLinks: false "
                "on the pod (the chart does), or rename that Service."
            )
    template = settings.chat_template
    if template and not (SHIPPED / f"{template}.jinja").is_file() and not Path(template).is_file():
        shipped = ", ".join(sorted(p.stem for p in SHIPPED.glob("*.jinja")))
        lines.append(
            f"{_names('chat_template')}: no such file, and not a shipped template "
            f"(shipped: {shipped})."
        )
    own = model_max_len(Path(settings.model))
    if settings.max_model_len is not None and own is not None and settings.max_model_len > own:
        lines.append(
            f"{_names('max_model_len')}: {settings.max_model_len} is above the model's own "
            f"context length {own}; it may only lower it."
        )
    if lines:
        raise ConfigError(lines)


def check_device(settings: Settings) -> None:
    """The NPU preflight for an explicit `npu`, before vLLM is imported
    (`auto` picks npu only where torch_npu works, and is checked at build)."""
    if settings.device != "npu":
        return
    tp = int(settings.engine_args.get("tensor_parallel_size", 1))
    try:
        check_npu(Path(settings.model), tp)
    except PreflightError as exc:
        raise ConfigError([str(exc)], code=1) from None


def check_stale_engines(settings: Settings) -> None:
    """A previous gateway's engine still running (it would hold the device):
    stop it, or refuse to start. After logging is configured: the line of a
    stop is a log record."""
    stale = find_stale(settings.data_dir)
    if not stale:
        return
    policy = settings.stale_engines
    if policy == "auto":
        policy = "refuse" if settings.device == "npu" else "stop"
    if policy == "refuse":
        raise ConfigError(
            [
                f"engine processes {sorted(e.procs)} of gateway {e.gateway}, which is gone, "
                f"still run and may hold the device ({e.record}); stop them (kill "
                f"{' '.join(map(str, sorted(e.procs)))}) or set GATEWAY_STALE_ENGINES=stop"
                for e in stale
            ]
        )
    for e in stale:
        pids = stop_stale(e)
        logger.warning(
            "stopped engine processes %s left running by gateway %d, which is gone (%s)",
            pids,
            e.gateway,
            e.record,
        )


def startup_settings(argv: list[str], environ: Mapping[str, str] = os.environ) -> Settings:
    """Settings for the CLI, or ConfigError."""
    settings = load_settings(argv)
    check_environment(settings, environ)
    check_device(settings)
    return settings

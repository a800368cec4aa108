"""One set of engine arguments for every contender, from the gateway's cpu profile."""

from __future__ import annotations

import json
from typing import Any

from app.config import Settings
from app.engine import profiles


def engine_kwargs(model: str) -> dict[str, Any]:
    kwargs = profiles.engine_kwargs(Settings(model=model), "cpu")
    kwargs["max_model_len"] = 2048
    return kwargs


def as_cli_flags(kwargs: dict[str, Any]) -> list[str]:
    """The same arguments as vLLM CLI flags (`--enforce-eager`, `--no-...`)."""
    flags: list[str] = []
    for key, value in kwargs.items():
        flag = "--" + key.replace("_", "-")
        if key == "model":
            flags += ["--model", str(value)]
        elif value is True:
            flags.append(flag)
        elif value is False:
            flags.append("--no-" + key.replace("_", "-"))
        elif isinstance(value, dict):
            flags += [flag, json.dumps(value)]
        else:
            flags += [flag, str(value)]
    return flags

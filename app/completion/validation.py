"""Pydantic's validation errors, told as one OpenAI-style message that names
the field, never the offending value nor a key the client chose."""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel

from app.completion import schemas

# Fields whose type is a union: pydantic reports one error per member, which
# reads badly ("should be a valid string" for a list); say what is accepted.
_UNION_HINTS = {
    "prompt": "a string, a list of strings, a list of token ids or a list of token-id lists",
    "stop": "a string or a list of strings",
}

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")


def _schema_fields() -> frozenset[str]:
    """Every field name of every request model in app.completion.schemas (a new
    model joins by itself)."""
    return frozenset(
        name
        for model in vars(schemas).values()
        if isinstance(model, type) and issubclass(model, BaseModel)
        for name in model.model_fields
    )


FIELDS = _schema_fields()


def _is_union_tag(part: str) -> bool:
    return "[" in part or part in {"str", "int", "float", "bool", "list", "dict"}


def describe(errors: list[Any]) -> tuple[str, str | None]:
    """(message, param) for the first validation problem."""
    if not errors:
        return "Invalid request body.", None
    # A value error is a validator's verdict on a value of the right type
    # (app.completion.schemas): more telling than the union members it failed to be.
    err = next((e for e in errors if e.get("type") == "value_error"), errors[0])
    kind = err.get("type", "")
    path = [str(p) for p in err.get("loc", ()) if p != "body"]
    # Name fields only: stop at a dict key or list index the client chose.
    names: list[str] = []
    for part in path:
        if part.isdigit() or _is_union_tag(part):
            continue
        if part not in FIELDS:
            break
        names.append(part)
    param = ".".join(names) or None
    if kind == "json_invalid":
        return "Request body is not valid JSON.", None
    if not names and kind in ("model_attributes_type", "dict_type", "model_type"):
        return "Request body must be a JSON object.", None
    if kind == "extra_forbidden":
        # Named like OpenAI does, but only when the name is a plain identifier:
        # an arbitrary client string is never reflected.
        extra = path[-1] if path else ""
        if _IDENTIFIER.fullmatch(extra):
            param = ".".join([*names, extra])
            return f"Unrecognized request argument supplied: {param}", param
        return "Unrecognized request argument supplied.", param
    if kind == "missing":
        return f"Missing required parameter: '{param}'.", param
    if kind == "value_error":
        msg = str(err.get("msg", "")).removeprefix("Value error, ")
        return f"Invalid value for '{param}': {msg}.", param
    if names and names[0] in _UNION_HINTS and len(names) == 1:
        return f"Invalid value for '{names[0]}': expected {_UNION_HINTS[names[0]]}.", names[0]
    msg = str(err.get("msg", "invalid value"))
    return (f"Invalid value for '{param}': {msg}." if param else f"{msg}."), param

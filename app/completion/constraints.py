"""Output constraints, as a request states them: OpenAI's `response_format`
(`json_object`, `json_schema`), vLLM's `structured_outputs` (`json`,
`choice`, `regex`, `grammar`, `json_object`) and vLLM's older `guided_*`
names, read into the one constraint the engine enforces. One per request;
each is checked here for what can be checked without the engine (its shape,
its size, a JSON Schema against its metaschema, a regex that compiles), and
the engine's own check (its grammar backend) follows at submission. Errors
name the field, never echo the constraint."""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Awaitable, Callable
from typing import Any, get_args

from jsonschema import SchemaError
from jsonschema.validators import validator_for

from app.completion.schemas import ChatCompletionRequest, CompletionRequest
from app.engine.protocol import StructuredKind, StructuredOutput
from app.errors import InvalidConstraint

# vLLM's structured_outputs keys that are a constraint (one of them), and the
# options that may come with it.
_KINDS: tuple[StructuredKind, ...] = get_args(StructuredKind)
_OPTIONS = {"disable_any_whitespace"}
_GUIDED: dict[str, StructuredKind] = {
    "guided_json": "json",
    "guided_choice": "choice",
    "guided_regex": "regex",
    "guided_grammar": "grammar",
}


# Constraints up to this size (as JSON) are checked inline: a few ms at most.
_INLINE_BYTES = 8192
_GUIDED_FIELDS = tuple(_GUIDED)


async def request_constraint(
    req: CompletionRequest | ChatCompletionRequest,
    max_bytes: int,
    worker: Callable[[Callable[[], StructuredOutput | None]], Awaitable[StructuredOutput | None]],
) -> StructuredOutput | None:
    """The request's one constraint, checked; nothing is looked at further
    for the requests that have none (the per-request path). A large one is
    checked by `worker` (the tokenizer's thread): the metaschema check of a
    64 KiB schema took ~330 ms, every stream's tokens waiting."""
    guided = {name: v for name in _GUIDED_FIELDS if (v := getattr(req, name)) is not None}
    fmt, so = req.response_format, req.structured_outputs
    if fmt is None and so is None and not guided:
        return None

    def check() -> StructuredOutput | None:
        return constraint_of(fmt, so, guided, max_bytes)

    if len(json.dumps([fmt, so, guided])) <= _INLINE_BYTES:
        return check()
    return await worker(check)


def constraint_of(
    response_format: dict[str, Any] | None,
    structured_outputs: dict[str, Any] | None,
    guided: dict[str, Any],
    max_bytes: int,
) -> StructuredOutput | None:
    """The request's one constraint, checked; None when it has none.
    `guided` maps each guided_* field the request set to its value."""
    found: list[tuple[StructuredKind, Any, str]] = []
    if response_format is not None:
        found += _response_format(response_format)
    options: dict[str, Any] = {}
    if structured_outputs is not None:
        for key, value in structured_outputs.items():
            if key in _OPTIONS:
                options[key] = _flag(value, f"structured_outputs.{key}")
            elif key in _KINDS:
                if value is not None:
                    found.append((key, value, f"structured_outputs.{key}"))
            else:
                raise InvalidConstraint(
                    "structured_outputs takes one of json, json_object, choice, regex, grammar "
                    "(and disable_any_whitespace).",
                    param="structured_outputs",
                )
    for name, value in guided.items():
        if value is not None:
            found.append((_GUIDED[name], value, name))
    if not found:
        return None
    if len(found) > 1:
        names = " and ".join(param for _, _, param in found)
        raise InvalidConstraint(
            f"One output constraint per request: this one has {names}.", param=found[1][2]
        )
    kind, value, param = found[0]
    value = _checked(kind, value, param, max_bytes)
    return StructuredOutput(kind, value, param, **options)


def _response_format(fmt: dict[str, Any]) -> list[tuple[StructuredKind, Any, str]]:
    kind = fmt.get("type")
    if kind == "text":
        return []
    if kind == "json_object":
        return [("json_object", True, "response_format")]
    if kind == "json_schema":
        spec = fmt.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("schema"), dict):
            raise InvalidConstraint(
                "response_format json_schema needs json_schema.schema, a JSON Schema object.",
                param="response_format.json_schema.schema",
            )
        return [("json", spec["schema"], "response_format.json_schema.schema")]
    raise InvalidConstraint(
        "response_format.type must be 'text', 'json_object' or 'json_schema'.",
        param="response_format.type",
    )


def _flag(value: Any, param: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidConstraint(f"{param} must be true or false.", param=param)
    return value


@functools.lru_cache(maxsize=256)
def _schema_error(text: str) -> str | None:
    """Where the schema (as JSON text) breaks its metaschema, None if it does
    not. Cached: a client sends the same schema request after request, and
    the metaschema check is most of what a constraint costs the gateway
    (~0.35 ms a request for a small schema, measured)."""
    schema = json.loads(text)
    try:
        validator_for(schema).check_schema(schema)
    except SchemaError as exc:
        return "/".join(str(p) for p in exc.path) or "its root"
    return None


def _checked(kind: StructuredKind, value: Any, param: str, max_bytes: int) -> Any:
    """`value` as the engine takes it, or InvalidConstraint."""
    text = value if isinstance(value, str) else json.dumps(value)
    size = len(text.encode())
    if size > max_bytes:
        raise InvalidConstraint(
            f"{param} is {size} bytes; at most {max_bytes} are accepted "
            "(GATEWAY_MAX_SCHEMA_BYTES).",
            param=param,
        )
    if kind == "json":
        if isinstance(value, str):  # vLLM's guided_json may be the schema's text
            try:
                value = json.loads(value)
            except ValueError:
                raise InvalidConstraint(f"{param} is not valid JSON.", param=param) from None
            text = json.dumps(value)
        if not isinstance(value, dict):
            raise InvalidConstraint(f"{param} must be a JSON Schema object.", param=param)
        where = _schema_error(text)
        if where is not None:
            raise InvalidConstraint(
                f"{param} is not a valid JSON Schema (at {where}).", param=param
            )
        return value
    if kind == "json_object":
        if value is not True:
            raise InvalidConstraint(f"{param} must be true.", param=param)
        return True
    if kind == "choice":
        if (
            not isinstance(value, list)
            or not value
            or not all(isinstance(c, str) and c for c in value)
        ):
            raise InvalidConstraint(
                f"{param} must be a non-empty list of non-empty strings.", param=param
            )
        return value
    if not isinstance(value, str) or not value.strip():
        raise InvalidConstraint(f"{param} must be a non-empty string.", param=param)
    if kind == "regex":
        try:
            re.compile(value)
        except re.error as exc:
            raise InvalidConstraint(
                f"{param} does not compile as a regular expression ({exc.msg}).", param=param
            ) from None
    return value

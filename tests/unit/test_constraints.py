"""Output constraints read from a request (app/completion/constraints.py):
every way of stating one gives the same constraint, two at once and every
malformed one is a 400 that names the field and never echoes the value."""

from __future__ import annotations

from typing import Any

import pytest

from app.completion.constraints import constraint_of
from app.errors import InvalidConstraint

SCHEMA = {"type": "object", "properties": {"a": {"type": "boolean"}}, "required": ["a"]}


def read(
    response_format: dict[str, Any] | None = None,
    structured_outputs: dict[str, Any] | None = None,
    max_bytes: int = 65536,
    **guided: Any,
):  # type: ignore[no-untyped-def]
    return constraint_of(response_format, structured_outputs, guided, max_bytes)


def refused(**kwargs: Any) -> InvalidConstraint:
    with pytest.raises(InvalidConstraint) as info:
        read(**kwargs)
    return info.value


def test_no_constraint_and_text_are_none() -> None:
    assert read() is None
    assert read(response_format={"type": "text"}) is None


@pytest.mark.parametrize(
    ("kwargs", "kind", "value", "param"),
    [
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "x", "schema": SCHEMA, "strict": True},
                }
            },
            "json",
            SCHEMA,
            "response_format.json_schema.schema",
        ),
        ({"response_format": {"type": "json_object"}}, "json_object", True, "response_format"),
        ({"structured_outputs": {"json": SCHEMA}}, "json", SCHEMA, "structured_outputs.json"),
        (
            {"structured_outputs": {"choice": ["a", "b"]}},
            "choice",
            ["a", "b"],
            "structured_outputs.choice",
        ),
        (
            {"structured_outputs": {"regex": "[0-9]+"}},
            "regex",
            "[0-9]+",
            "structured_outputs.regex",
        ),
        (
            {"structured_outputs": {"grammar": 'root ::= "x"'}},
            "grammar",
            'root ::= "x"',
            "structured_outputs.grammar",
        ),
        ({"guided_json": SCHEMA}, "json", SCHEMA, "guided_json"),
        ({"guided_json": '{"type": "string"}'}, "json", {"type": "string"}, "guided_json"),
        ({"guided_choice": ["x"]}, "choice", ["x"], "guided_choice"),
        ({"guided_regex": "a|b"}, "regex", "a|b", "guided_regex"),
        ({"guided_grammar": 'root ::= "y"'}, "grammar", 'root ::= "y"', "guided_grammar"),
    ],
)
def test_every_way_of_stating_a_constraint(
    kwargs: dict[str, Any], kind: str, value: Any, param: str
) -> None:
    c = read(**kwargs)
    assert (c.kind, c.value, c.param) == (kind, value, param)


def test_whitespace_option_travels_with_the_constraint() -> None:
    c = read(structured_outputs={"choice": ["a"], "disable_any_whitespace": True})
    assert c.disable_any_whitespace is True


def test_two_constraints_are_refused_naming_both() -> None:
    err = refused(response_format={"type": "json_object"}, guided_regex="a")
    assert "response_format and guided_regex" in err.message and err.param == "guided_regex"
    err = refused(structured_outputs={"regex": "a", "choice": ["b"]})
    assert "structured_outputs.regex and structured_outputs.choice" in err.message


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"response_format": {"type": "xml"}}, "response_format.type"),
        ({"response_format": {"type": "json_schema"}}, "response_format.json_schema.schema"),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"schema": "x"}}},
            "response_format.json_schema.schema",
        ),
        ({"structured_outputs": {"json": {"type": "strin"}}}, "structured_outputs.json"),
        (
            {"structured_outputs": {"json": {"properties": {"a": {"minimum": "zero"}}}}},
            "structured_outputs.json",
        ),
        ({"guided_json": "{not json"}, "guided_json"),
        ({"structured_outputs": {"regex": "[unclosed"}}, "structured_outputs.regex"),
        ({"structured_outputs": {"regex": "   "}}, "structured_outputs.regex"),
        ({"structured_outputs": {"choice": []}}, "structured_outputs.choice"),
        ({"structured_outputs": {"choice": ["a", ""]}}, "structured_outputs.choice"),
        ({"structured_outputs": {"grammar": ""}}, "structured_outputs.grammar"),
        ({"structured_outputs": {"json_object": False}}, "structured_outputs.json_object"),
        ({"structured_outputs": {"xml": "x"}}, "structured_outputs"),
        (
            {"structured_outputs": {"choice": ["a"], "disable_any_whitespace": "yes"}},
            "structured_outputs.disable_any_whitespace",
        ),
    ],
)
def test_malformed_constraints_are_400s_that_name_the_field(
    kwargs: dict[str, Any], param: str
) -> None:
    err = refused(**kwargs)
    assert err.param == param and err.status == 400 and err.reason == "invalid_constraint"
    # Never the constraint itself in the answer.
    for marker in ("strin", "zero", "[unclosed", "not json", "xml"):
        if marker in str(kwargs) and marker not in param:
            assert marker not in err.message


def test_a_constraint_over_the_size_limit_is_refused() -> None:
    big = {"type": "object", "properties": {f"p{i}": {"type": "string"} for i in range(200)}}
    err = refused(structured_outputs={"json": big}, max_bytes=1024)
    assert "GATEWAY_MAX_SCHEMA_BYTES" in err.message and err.param == "structured_outputs.json"
    assert read(structured_outputs={"json": big}, max_bytes=65536) is not None

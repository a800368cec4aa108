"""A batch input file: accepted as (custom_id, body) lines, or refused whole
with a 400 naming the first bad line."""

from __future__ import annotations

import json

import pytest

from app.batches.input import read_input
from app.errors import InvalidRequest

URL = "/v1/completions"


def line(custom_id: object = "a", **over: object) -> str:
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": URL,
                       "body": {"prompt": "x"}, **over})  # fmt: skip


def test_good_lines_in_order_blank_lines_skipped() -> None:
    text = "\n".join([line("a"), "", line("b")]) + "\n"
    assert read_input(text.encode(), URL, 10) == [("a", {"prompt": "x"}), ("b", {"prompt": "x"})]


@pytest.mark.parametrize(
    ("lines", "why"),
    [
        ([line("a"), "{not json"], "Line 2 of the input file: it is not JSON."),
        ([line("a"), line("a")], "Line 2 of the input file: custom_id 'a' is used twice."),
        ([line("")], "Line 1 of the input file: custom_id must be a non-empty string."),
        ([line(7)], "Line 1 of the input file: custom_id must be a non-empty string."),
        ([line(method="GET")], "Line 1 of the input file: method must be POST."),
        ([line(url="/v1/chat/completions")],
         "Line 1 of the input file: url must be the batch's endpoint, /v1/completions."),
        ([line(body=[1])], "Line 1 of the input file: body must be a JSON object."),
        (["[1]"], "Line 1 of the input file: it is not a JSON object."),
        ([line("a"), line("b"), line("c")],
         "Line 3 of the input file: a batch holds at most 2 lines."),
        ([""], "The input file has no requests."),
    ],
)  # fmt: skip
def test_an_unusable_file_is_refused_naming_its_first_bad_line(lines: list[str], why: str) -> None:
    with pytest.raises(InvalidRequest) as exc:
        read_input("\n".join(lines).encode(), URL, 2)
    assert exc.value.message == why and exc.value.param == "input_file_id"


def test_not_utf8_and_unknown_endpoints_are_refused() -> None:
    with pytest.raises(InvalidRequest) as exc:
        read_input(b"\xff\xfe", URL, 2)
    assert exc.value.param == "input_file_id"
    with pytest.raises(InvalidRequest) as exc:
        read_input(line().encode(), "/v1/embeddings", 2)
    assert exc.value.param == "endpoint"

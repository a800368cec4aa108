"""A batch's input file read and checked before the job is accepted: JSON
lines of `{"custom_id", "method": "POST", "url", "body"}` (OpenAI's format),
one endpoint per file, each custom_id once. A file that breaks this is
refused whole with a 400 naming its first bad line; what a line's body asks
(an unknown model, a bad parameter) is that line's error, in the error file."""

from __future__ import annotations

import json
from typing import Any

from app.errors import InvalidRequest

ENDPOINTS = ("/v1/completions", "/v1/chat/completions")


def read_input(content: bytes, endpoint: str, max_lines: int) -> list[tuple[str, dict[str, Any]]]:
    """(custom_id, body) per line, in order; InvalidRequest for an unusable file."""
    if endpoint not in ENDPOINTS:
        raise InvalidRequest(f"endpoint must be one of {', '.join(ENDPOINTS)}.", param="endpoint")
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidRequest("The input file is not UTF-8 text.", param="input_file_id") from None
    out: list[tuple[str, dict[str, Any]]] = []
    seen: set[str] = set()
    # JSONL lines end at \n only: str.splitlines() would also cut at U+2028,
    # U+2029 and U+0085, which JSON strings may hold raw.
    for number, raw in enumerate(text.split("\n"), start=1):
        if not raw.strip():
            continue
        if len(out) == max_lines:
            raise _bad(number, f"a batch holds at most {max_lines} lines")
        try:
            line = json.loads(raw)
        except ValueError:
            raise _bad(number, "it is not JSON") from None
        if not isinstance(line, dict):
            raise _bad(number, "it is not a JSON object")
        custom_id = line.get("custom_id")
        if not isinstance(custom_id, str) or not custom_id:
            raise _bad(number, "custom_id must be a non-empty string")
        if "\x00" in custom_id:
            raise _bad(number, "custom_id must not hold a NUL character")
        if custom_id in seen:
            raise _bad(number, f"custom_id {custom_id[:64]!r} is used twice")
        if line.get("method", "POST") != "POST":
            raise _bad(number, "method must be POST")
        if line.get("url") != endpoint:
            raise _bad(number, f"url must be the batch's endpoint, {endpoint}")
        body = line.get("body")
        if not isinstance(body, dict):
            raise _bad(number, "body must be a JSON object")
        seen.add(custom_id)
        out.append((custom_id, body))
    if not out:
        raise InvalidRequest("The input file has no requests.", param="input_file_id")
    return out


def _bad(number: int, why: str) -> InvalidRequest:
    return InvalidRequest(f"Line {number} of the input file: {why}.", param="input_file_id")

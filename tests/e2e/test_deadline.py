"""GATEWAY_REQUEST_TIMEOUT aborts the engine work; a stream that waits in the
queue receives keep-alive comments until it gets its place."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.gateway import MODEL_NAME, Gateway, start_gateway, stop_gateway
from tests.support.metrics import delta, metric, scrape, wait_running_zero
from tests.support.wait import until

TIMEOUT = 4.0  # seconds; the tiny model needs far longer for LONG
LONG = {"prompt": [1], "max_tokens": 2000, "ignore_eos": True}


@pytest.fixture(scope="module")
def timed(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    log = tmp_path_factory.mktemp("timed") / "gateway.log"
    gw: Gateway = start_gateway(
        model_dir,
        log,
        "--warmup",
        "none",
        env={
            "GATEWAY_REQUEST_TIMEOUT": str(TIMEOUT),
            "GATEWAY_SSE_KEEPALIVE": "0.2",
            "GATEWAY_MAX_INFLIGHT": "1",
            "GATEWAY_MAX_QUEUE": "4",
        },
    )
    with httpx.Client(base_url=gw.url, timeout=60) as c:
        yield c
    stop_gateway(gw)


def timeouts(http: httpx.Client) -> float:
    return metric(http, "gateway_request_timeouts_total")


def test_non_stream_deadline_is_504_and_aborts_the_engine(timed: httpx.Client) -> None:
    before = timeouts(timed)
    start = time.monotonic()
    r = timed.post("/v1/completions", json=LONG)
    took = time.monotonic() - start
    assert r.status_code == 504, r.text
    err = r.json()["error"]
    assert (err["type"], err["code"]) == ("timeout_error", "request_timeout")
    assert TIMEOUT <= took < TIMEOUT + 30  # not before the deadline (generous after it)
    wait_running_zero(timed)  # the engine stopped generating
    assert timeouts(timed) == before + 1
    ok = timed.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 4})
    assert ok.status_code == 200  # and keeps serving


def stream_timeouts(http: httpx.Client) -> float:
    """gateway_stream_errors_total{type="timeout_error"}, 0 before the first."""
    samples = scrape(http)
    return sum(
        v
        for (name, labels), v in samples.items()
        if name == "gateway_stream_errors_total" and ("type", "timeout_error") in labels
    )


def test_stream_deadline_ends_with_an_error_event_and_done(timed: httpx.Client) -> None:
    before = timeouts(timed)
    before_stream = stream_timeouts(timed)
    with timed.stream("POST", "/v1/completions", json={**LONG, "stream": True}) as r:
        assert r.status_code == 200
        data = [ln[5:].strip() for ln in r.iter_lines() if ln.startswith("data:")]
    assert data[-1] == "[DONE]"
    error = json.loads(data[-2])["error"]
    assert (error["type"], error["code"]) == ("timeout_error", "request_timeout")
    tokens = [json.loads(d)["choices"][0]["text"] for d in data[:-2]]
    assert 0 < len(tokens) < 2000  # it streamed, then was stopped
    wait_running_zero(timed)
    assert timeouts(timed) == before + 1
    assert stream_timeouts(timed) == before_stream + 1


def test_queued_stream_gets_keepalive_comments_then_its_tokens(timed: httpx.Client) -> None:
    # MAX_INFLIGHT=1: a blocking stream holds the only place.
    with timed.stream("POST", "/v1/completions", json={**LONG, "stream": True}) as blocker:
        lines = blocker.iter_lines()
        assert next(ln for ln in lines if ln.startswith("data:"))
        seen: list[str] = []
        got_headers = threading.Event()

        def queued() -> None:
            body = {"prompt": "Hi", "max_tokens": 8, "ignore_eos": True, "stream": True}
            with timed.stream("POST", "/v1/completions", json=body) as r:
                seen.append(str(r.status_code))
                got_headers.set()
                seen.extend(r.iter_lines())

        t = threading.Thread(target=queued)
        t.start()
        assert got_headers.wait(30), "a queued stream should answer its headers at once"
        until(lambda: sum(ln.startswith(":") for ln in seen) >= 2, "two keep-alive comments")
        waiting = list(seen)
    t.join(30)  # the blocker is closed: its place goes to the queued stream
    assert not t.is_alive()
    assert waiting[0] == "200"
    comments = [ln for ln in waiting if ln.startswith(":")]
    assert len(comments) >= 2, waiting
    assert not [ln for ln in waiting if ln.startswith("data:")]
    data = [ln[5:].strip() for ln in seen if ln.startswith("data:")]
    assert data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert "error" not in data[-2]


def test_a_queued_client_that_leaves_gives_its_place_in_the_queue_back(
    timed: httpx.Client,
) -> None:
    # MAX_INFLIGHT=1: a stream holds the place; a second waits in the queue
    # (keep-alive comments) and its client leaves before it ever runs.
    before = scrape(timed)
    with timed.stream("POST", "/v1/completions", json={**LONG, "stream": True}) as blocker:
        held = blocker.iter_lines()  # kept: a dropped line iterator closes the response
        assert next(ln for ln in held if ln.startswith("data:"))
        body = {"prompt": "Hi", "max_tokens": 8, "stream": True}
        with timed.stream("POST", "/v1/completions", json=body) as queued:
            assert queued.status_code == 200
            waiting = queued.iter_lines()
            assert next(ln for ln in waiting if ln.startswith(":"))  # a keep-alive comment
            assert metric(timed, "gateway_admission_queued") == 1
        # the queued client is gone
        until(lambda: metric(timed, "gateway_admission_queued") == 0, "the queue emptied")
        assert metric(timed, "gateway_admission_running") == 1  # the blocker still runs
    until(lambda: metric(timed, "gateway_admission_running") == 0, "the blocker's place freed")
    after = scrape(timed)
    # both left before their end: counted as the client's abort, not an error
    assert delta(before, after, "gateway_client_aborts_total", model=MODEL_NAME) == 2
    assert delta(before, after, "gateway_stream_errors_total", model=MODEL_NAME,
                 type="timeout_error") == 0  # fmt: skip
    ok = timed.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 4})
    assert ok.status_code == 200

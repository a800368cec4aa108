"""The completion pipeline without HTTP and without vLLM: request -> prepare
(text and chat) -> generation -> choices -> the whole answer or the SSE
events, on the in-process fake engine. The same behaviours run on the real
engine in tests/e2e; these make `make test-fast` cover the request -> chunks
path in seconds."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from app.completion.assembly import build_service
from app.completion.schemas import ChatCompletionRequest, CompletionRequest
from app.completion.service import CompletionService
from app.completion.stream import CompletionStream
from app.completion.wire import DONE_EVENT, TEXT, error_events, sse_event
from app.config import Settings
from app.engine.protocol import SamplingOptions
from app.errors import (
    ContextLengthExceeded,
    EngineFailure,
    InvalidConstraint,
    InvalidRequest,
    ModelNotFound,
    Overloaded,
    RequestTimeout,
)
from app.observability.metrics import Metrics
from testkit.fake_engine import FakeEngine, Lp, Out, ReqOut
from tests.support.wait import until_async

pytestmark = pytest.mark.anyio


async def letters(ids: list[int], options: SamplingOptions) -> AsyncIterator[ReqOut]:
    """One letter per step for each of the n samples: sample j writes chr(97 + j),
    until max_tokens ('length')."""
    for step in range(options.max_tokens):
        last = step == options.max_tokens - 1
        yield ReqOut(
            [
                Out(j, chr(97 + j), [3 + 97 + j], finish_reason="length" if last else None)
                for j in range(options.n)
            ],
            finished=last,
        )


def held_until(gate: asyncio.Event):  # type: ignore[no-untyped-def]
    """A script that sends one token, then holds its place until `gate` is set."""

    async def held(ids: list[int], options: SamplingOptions) -> AsyncIterator[ReqOut]:
        yield ReqOut([Out(0, "a", [5])])
        await gate.wait()
        yield ReqOut([Out(0, "b", [6], "stop")], finished=True)

    return held


def service(
    script=letters,  # type: ignore[no-untyped-def]
    max_inflight: int = 4,
    max_queue: int = 4,
    max_model_len: int = 64,
    **overrides: object,
) -> tuple[CompletionService, Metrics]:
    overrides.setdefault("served_model_name", "fake")
    settings = Settings(
        chat_template="mobilellama-v1",
        max_inflight=max_inflight,
        max_queue=max_queue,
        max_queued_tokens=10_000,
        **overrides,  # type: ignore[arg-type]
    )
    metrics = Metrics(CollectorRegistry(), "fake")
    engine = FakeEngine(script, max_model_len=max_model_len)
    return build_service(settings, engine, metrics), metrics  # type: ignore[arg-type]


def sample(metrics: Metrics, name: str) -> float | None:
    """The series of the model, None when it is not exported at all."""
    return metrics.registry.get_sample_value(name, {"model": "fake"})


async def events_of(stream: CompletionStream) -> list[str]:
    """Every `data:` payload the stream sends, in order ([DONE] included)."""
    out: list[str] = []
    try:
        while not stream.done:
            text = await stream.next_events()
            out += [e.removeprefix("data: ") for e in text.split("\n\n") if e]
    finally:
        await stream.close()
    return out


async def test_a_text_completion_is_prepared_run_and_answered_whole() -> None:
    svc, metrics = service()
    prep = await svc.prepare(CompletionRequest(prompt="hi", max_tokens=3, n=2))
    body = await svc.complete(prep)
    assert body["object"] == "text_completion"
    assert body["id"].startswith("cmpl-")
    assert [(c["index"], c["text"], c["finish_reason"]) for c in body["choices"]] == [
        (0, "aaa", "length"),
        (1, "bbb", "length"),
    ]
    # "hi" is BOS + 2 characters in the fake tokenizer.
    assert body["usage"]["prompt_tokens"] == 3
    assert body["usage"]["completion_tokens"] == 6
    assert sample(metrics, "gateway_generation_tokens_total") == 6


async def test_a_stream_sends_the_same_text_as_chunks_then_usage_then_done() -> None:
    svc, _ = service()
    req = CompletionRequest(
        prompt="hi", max_tokens=3, stream=True, stream_options={"include_usage": True}
    )
    stream = await svc.open_stream(await svc.prepare(req))
    events = await events_of(stream)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    usage = chunks.pop()
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 3
    assert "".join(c["choices"][0]["text"] for c in chunks) == "aaa"
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None, None, "length"]
    # include_usage: every chunk but the last carries "usage": null.
    assert all("usage" in c and c["usage"] is None for c in chunks)


async def test_the_text_fast_path_writes_what_json_dumps_writes() -> None:
    """The per-token encoder (app.completion.wire) against the generic chunk
    of the same delta, for text that needs escaping and a line separator."""
    svc, _ = service()
    for include_usage in (False, True):
        prep = await svc.prepare(
            CompletionRequest(
                prompt="x", max_tokens=1, stream=True,
                stream_options={"include_usage": include_usage},
            )
        )  # fmt: skip
        stream = await svc.open_stream(prep)
        try:
            fast = stream.frames.delta

            for d in stream.choices.feed(0, ReqOut([Out(0, 'q"\\\u2028é\n', [5], "stop")])):
                generic = sse_event(
                    json.dumps(
                        {**TEXT.head(prep), "choices": [TEXT.delta(d, prep)],
                         **({"usage": None} if include_usage else {})},
                        ensure_ascii=False,
                    )
                )  # fmt: skip
                assert fast(d) == generic
        finally:
            await stream.close()


async def test_a_chat_stream_opens_with_the_assistant_role_then_content() -> None:
    svc, _ = service(max_model_len=512)  # the template's system prompt is long
    req = ChatCompletionRequest(
        messages=[{"role": "user", "content": "hello"}], max_tokens=2, stream=True
    )
    prep = await svc.prepare(req)
    assert prep.chat and prep.request_id.startswith("chatcmpl-")
    events = await events_of(await svc.open_stream(prep))
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks[1:]) == "aa"


async def test_chat_whole_answer_is_a_message() -> None:
    svc, _ = service(max_model_len=512)
    req = ChatCompletionRequest(messages=[{"role": "user", "content": "hello"}], max_tokens=2)
    body = await svc.complete(await svc.prepare(req))
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "aa"}


async def test_several_prompts_are_answered_prompt_by_prompt() -> None:
    svc, _ = service()
    body = await svc.complete(await svc.prepare(CompletionRequest(prompt=["a", "b"], max_tokens=2)))
    assert [(c["index"], c["text"]) for c in body["choices"]] == [(0, "aa"), (1, "aa")]


async def test_an_over_long_prompt_is_cut_on_the_left_and_counted() -> None:
    svc, metrics = service()  # the fake engine's context is 64 tokens
    prep = await svc.prepare(CompletionRequest(prompt="z" * 100, max_tokens=4))
    assert prep.prompt_tokens == 60 and prep.prompts[0].token_ids[0] == 1  # BOS kept
    assert prep.headers()["x-truncated-prompt-tokens"] == str(101 - 60)
    assert sample(metrics, "gateway_truncated_tokens_total") == 41


async def test_under_truncation_error_an_over_long_prompt_is_refused() -> None:
    svc, _ = service(truncation="error")
    with pytest.raises(ContextLengthExceeded):
        await svc.prepare(CompletionRequest(prompt="z" * 100, max_tokens=4))


async def test_stream_interval_merges_tokens_after_the_first() -> None:
    svc, _ = service()
    req = CompletionRequest(prompt="hi", max_tokens=7, stream=True, stream_interval=3)
    events = await events_of(await svc.open_stream(await svc.prepare(req)))
    texts = [json.loads(e)["choices"][0]["text"] for e in events[:-1]]
    assert texts == ["a", "aaa", "aaa"]


async def test_echo_sends_the_prompt_first() -> None:
    svc, _ = service()
    body = await svc.complete(
        await svc.prepare(CompletionRequest(prompt="hi", max_tokens=1, echo=True))
    )
    assert body["choices"][0]["text"] == "hia"


async def test_a_full_server_refuses_at_once_and_a_finished_request_frees_its_place() -> None:
    gate = asyncio.Event()
    held = held_until(gate)

    svc, _ = service(held, max_inflight=1, max_queue=0)
    req = CompletionRequest(prompt="hi", max_tokens=2, stream=True)
    first = await svc.open_stream(await svc.prepare(req))
    with pytest.raises(Overloaded):
        await svc.open_stream(await svc.prepare(req))
    gate.set()
    assert (await events_of(first))[-1] == "[DONE]"
    again = await svc.open_stream(await svc.prepare(req))
    assert (await events_of(again))[-1] == "[DONE]"


async def test_an_engine_error_mid_stream_reaches_the_stream() -> None:
    async def breaks(ids: list[int], options: SamplingOptions) -> AsyncIterator[ReqOut]:
        yield ReqOut([Out(0, "a", [5])])
        raise EngineFailure("boom")

    svc, _ = service(breaks)
    stream = await svc.open_stream(
        await svc.prepare(CompletionRequest(prompt="hi", max_tokens=4, stream=True))
    )
    try:
        await stream.next_events()
        with pytest.raises(EngineFailure):
            await stream.next_events()
    finally:
        await stream.close()
    # The event that ends such a stream: its error, then [DONE].
    tail = error_events(EngineFailure("boom"))
    assert (
        tail.endswith(DONE_EVENT) and json.loads(tail.split("\n\n")[0][6:])["error"]["code"] == 500
    )


async def test_the_service_seam_counts_engine_requests_and_breaks_them() -> None:
    started = asyncio.Event()

    async def hangs(ids: list[int], options: SamplingOptions) -> AsyncIterator[ReqOut]:
        yield ReqOut([Out(0, "a", [5])])
        started.set()
        await asyncio.Event().wait()
        yield ReqOut([])  # pragma: no cover

    svc, _ = service(hangs)
    stream = await svc.open_stream(
        await svc.prepare(CompletionRequest(prompt="hi", max_tokens=4, stream=True))
    )
    await stream.next_events()
    assert svc.in_engine() == 1
    svc.break_all(EngineFailure("hung"))
    with pytest.raises(EngineFailure):
        await stream.next_events()
    await stream.close()
    assert svc.in_engine() == 0


async def test_a_constraint_reaches_the_engine_and_is_counted() -> None:
    seen: list[SamplingOptions] = []

    async def record(ids: list[int], options: SamplingOptions) -> AsyncIterator[ReqOut]:
        seen.append(options)
        yield ReqOut([Out(0, "yes", [5], "stop")], finished=True)

    svc, metrics = service(record, max_model_len=512)
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "string"}}}
    await svc.complete(
        await svc.prepare(
            ChatCompletionRequest(messages=[{"role": "user", "content": "hi"}], response_format=fmt)
        )
    )
    await svc.complete(
        await svc.prepare(CompletionRequest(prompt="hi", structured_outputs={"choice": ["yes"]}))
    )
    assert [(o.structured.kind, o.structured.value) for o in seen] == [  # type: ignore[union-attr]
        ("json", {"type": "string"}),
        ("choice", ["yes"]),
    ]
    for kind, count in (("json", 1), ("choice", 1), ("regex", 0)):
        got = metrics.registry.get_sample_value(
            "gateway_structured_requests_total", {"model": "fake", "kind": kind}
        )
        assert got == count, kind


async def test_the_engines_refusal_of_a_constraint_names_its_field() -> None:
    async def refuses(ids: list[int], options: SamplingOptions) -> AsyncIterator[ReqOut]:
        raise ValueError("Failed to transform grammar: root ::= oops")
        yield ReqOut([])  # pragma: no cover

    svc, _ = service(refuses)
    prep = await svc.prepare(
        CompletionRequest(prompt="hi", structured_outputs={"grammar": "root ::= oops"})
    )
    with pytest.raises(InvalidConstraint) as info:
        await svc.complete(prep)
    assert info.value.param == "structured_outputs.grammar"
    assert info.value.reason == "invalid_constraint"
    assert "oops" not in info.value.message  # the backend's quote of the constraint is not told


async def test_scoring_returns_the_prompt_and_its_logprobs_without_the_generated_token() -> None:
    async def scored(ids: list[int], options: SamplingOptions) -> AsyncIterator[ReqOut]:
        assert options.max_tokens == 1 and options.prompt_logprobs == 1
        prompt = [None] + [{t: Lp(-0.5, None)} for t in ids[1:]]
        yield ReqOut(
            [Out(0, "z", [9], "length", logprobs=[{9: Lp(-1.0, "z")}])],
            finished=True,
            prompt_logprobs=prompt,
        )

    svc, _ = service(scored)
    prep = await svc.prepare(CompletionRequest(prompt="hi", max_tokens=0, echo=True, logprobs=1))
    body = await svc.complete(prep)
    choice = body["choices"][0]
    assert choice["text"] == "hi"
    assert choice["logprobs"]["token_logprobs"] == [None, -0.5, -0.5]
    assert body["usage"]["completion_tokens"] == 0
    assert body["usage"]["prompt_tokens"] == 3
    with pytest.raises(InvalidRequest) as info:
        await svc.prepare(CompletionRequest(prompt="hi", max_tokens=0))
    assert info.value.param == "max_tokens"


async def test_every_served_name_is_accepted_and_answers_use_the_first() -> None:
    svc, _ = service(served_model_name="main,alias")
    body = await svc.complete(await svc.prepare(CompletionRequest(prompt="hi", model="alias")))
    assert body["model"] == "main"
    with pytest.raises(ModelNotFound):
        await svc.prepare(CompletionRequest(prompt="hi", model="other"))


async def test_a_large_constraint_is_checked_off_the_event_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from app.completion import constraints as constraints_module

    entered, release = threading.Event(), threading.Event()
    real = constraints_module.constraint_of

    def slow(*args: Any) -> Any:  # a metaschema check that takes its time
        entered.set()
        assert release.wait(10), "the check ran on the event loop"
        return real(*args)

    monkeypatch.setattr(constraints_module, "constraint_of", slow)
    svc, _ = service()
    big = {"type": "object", "description": "x" * 10_000}
    task = asyncio.create_task(
        svc.prepare(CompletionRequest(prompt="hi", structured_outputs={"json": big}))
    )
    assert await asyncio.to_thread(entered.wait, 5)
    # The loop runs other work while the check runs on the worker thread.
    ticks = 0
    for _ in range(3):
        await asyncio.sleep(0)
        ticks += 1
    assert ticks == 3 and not task.done()
    release.set()
    prep = await task
    assert prep.options.structured is not None and prep.options.structured.kind == "json"


async def test_a_queued_request_whose_deadline_passes_is_a_504_and_leaves_the_queue() -> None:
    gate = asyncio.Event()
    held = held_until(gate)

    svc, _ = service(held, max_inflight=1, max_queue=2, request_timeout=0.5)
    req = CompletionRequest(prompt="hi", max_tokens=2, stream=True)
    holder = await svc.open_stream(await svc.prepare(req))
    waiting = asyncio.create_task(
        svc.complete(await svc.prepare(CompletionRequest(prompt="hi", max_tokens=2)))
    )
    assert await until_async(
        lambda: _true(svc.runner.admission.queued == 1), "the second request queued"
    )
    with pytest.raises(RequestTimeout):
        await waiting  # its deadline passed while it waited for the place
    assert (svc.runner.admission.queued, svc.runner.admission.queued_tokens) == (0, 0)
    assert len(engine_of(svc).priorities) == 1  # it never reached the engine
    assert svc.runner.admission.running == 1  # the holder keeps its place
    await holder.close()
    assert svc.runner.admission.running == 0


async def test_a_queued_request_whose_client_leaves_frees_its_place_in_the_queue() -> None:
    gate = asyncio.Event()
    held = held_until(gate)

    svc, _ = service(held, max_inflight=1, max_queue=1)
    holder = await svc.open_stream(
        await svc.prepare(CompletionRequest(prompt="hi", max_tokens=2, stream=True))
    )
    leaving = asyncio.create_task(
        svc.complete(await svc.prepare(CompletionRequest(prompt="hi", max_tokens=2)))
    )
    await until_async(lambda: _true(svc.runner.admission.queued == 1), "queued")
    leaving.cancel()  # the client went away (the server cancels its handler)
    await asyncio.gather(leaving, return_exceptions=True)
    assert svc.runner.admission.queued == 0
    # the queue's one place is free again: a new request may wait there
    again = asyncio.create_task(
        svc.complete(await svc.prepare(CompletionRequest(prompt="hi", max_tokens=2)))
    )
    await until_async(lambda: _true(svc.runner.admission.queued == 1), "queued again")
    gate.set()
    assert (await events_of(holder))[-1] == "[DONE]"
    body = await again
    assert body["choices"][0]["finish_reason"] == "stop"
    assert len(engine_of(svc).priorities) == 2  # the holder and the last: the leaver never ran


def engine_of(svc: CompletionService) -> FakeEngine:
    engine = svc.runner.engine
    assert isinstance(engine, FakeEngine)
    return engine


async def _true(condition: bool) -> bool | None:
    return True if condition else None


async def test_under_truncation_error_a_chat_that_does_not_fit_is_refused_whole() -> None:
    svc, _ = service(max_model_len=512, truncation="error")
    fits = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    prep = await svc.prepare(ChatCompletionRequest(messages=fits, max_tokens=4))
    assert prep.headers()["x-truncated-messages"] == "0"
    long = [
        *fits,
        {"role": "assistant", "content": "x" * 300},
        {"role": "user", "content": "y" * 300},
    ]
    with pytest.raises(ContextLengthExceeded) as exc:
        await svc.prepare(ChatCompletionRequest(messages=long, max_tokens=4))
    # nothing dropped under `error`: the counts of the whole conversation
    assert exc.value.param == "messages"
    assert "in the 4 messages, 4 for the completion" in exc.value.message
    assert "maximum context length is 512 tokens" in exc.value.message

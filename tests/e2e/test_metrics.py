"""/metrics on the real engine: exact counts after a known workload, batch
occupancy from vLLM's per-step stats, promtool, and a real Prometheus."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from testkit.procs import wait_ok
from tests.support.gateway import MODEL_NAME, ROOT, Gateway, free_port
from tests.support.metrics import Samples, scrape
from tests.support.metrics import delta as support_delta
from tests.support.metrics import value as support_value
from tests.support.wait import until

PROMETHEUS = ROOT / ".cache" / "prometheus" / "usr" / "bin"
M = {"model": MODEL_NAME}


def value(samples: Samples, name: str, **labels: str) -> float:
    return support_value(samples, name, **{**M, **labels})


def delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return support_delta(before, after, name, **{**M, **labels})


def vllm_delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    """Summed over vLLM's series of `name` that carry these labels (its own
    label set: model_name, engine, ...)."""

    def total(samples: Samples) -> float:
        wanted = set(labels.items())
        return sum(v for (n, ls), v in samples.items() if n == name and wanted <= set(ls))

    assert any(n == name for n, _ in after), f"{name} is not in the scrape"
    return total(after) - total(before)


def test_known_workload_gives_exact_counts(http: httpx.Client, client: openai.OpenAI) -> None:
    before = scrape(http)
    for stream in (False, True, False):
        out = client.completions.create(
            model=MODEL_NAME,
            prompt="The capital of France is",
            max_tokens=10,
            temperature=0,
            stream=stream,
            extra_body={"ignore_eos": True},
        )
        if stream:
            list(out)  # type: ignore[call-overload]

    # vLLM reports a step's stats after handing out its outputs: give it a moment.
    def arrived() -> dict | None:  # type: ignore[type-arg]
        after = scrape(http)
        return after if delta(before, after, "gateway_request_queue_seconds_count") >= 3 else None

    after = until(arrived, "queue times arrived from the engine", every=0.05)
    assert delta(before, after, "gateway_generation_tokens_total") == 30
    assert delta(before, after, "gateway_prompt_tokens_total") == 18
    assert delta(before, after, "gateway_time_to_first_token_seconds_count") == 3
    assert delta(before, after, "gateway_time_per_output_token_seconds_count") == 3
    assert delta(before, after, "gateway_e2e_request_latency_seconds_count") == 3
    assert delta(before, after, "gateway_inter_token_latency_seconds_count") == 27
    assert delta(before, after, "gateway_request_queue_seconds_count") == 3
    assert delta(before, after, "gateway_request_finished_total", finish_reason="length") == 3
    assert (
        delta(before, after, "gateway_requests_total", endpoint="/v1/completions", status="200")
        == 3
    )
    tpot_sum = delta(before, after, "gateway_time_per_output_token_seconds_sum")
    e2e_sum = delta(before, after, "gateway_e2e_request_latency_seconds_sum")
    assert 0 < tpot_sum * 9 < e2e_sum  # TPOT excludes the first token's wait
    # vLLM's own families (its stat logger on app.observability.loop_metrics) count the same.
    assert vllm_delta(before, after, "vllm:generation_tokens_total") == 30
    assert vllm_delta(before, after, "vllm:prompt_tokens_total") == 18
    assert vllm_delta(before, after, "vllm:request_success_total", finished_reason="length") == 3
    assert vllm_delta(before, after, "vllm:e2e_request_latency_seconds_count") == 3
    assert vllm_delta(before, after, "vllm:inter_token_latency_seconds_count") == 27
    assert vllm_delta(before, after, "vllm:iteration_tokens_total_count") >= 10


def test_batch_occupancy_follows_concurrent_streams(http: httpx.Client, gateway: Gateway) -> None:
    before = scrape(http)
    max_num_seqs = 64  # the cpu profile
    peak = 0.0
    done = threading.Event()

    def stream() -> None:
        with httpx.stream(
            "POST",
            f"{gateway.url}/v1/completions",
            timeout=60,
            json={"prompt": [1], "max_tokens": 400, "ignore_eos": True, "stream": True},
        ) as r:
            for _ in r.iter_lines():
                pass

    threads = [threading.Thread(target=stream) for _ in range(4)]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        peak = max(peak, value(scrape(http), "gateway_batch_occupancy_ratio"))
        time.sleep(0.01)
    done.set()
    after = scrape(http)
    assert peak >= 4 / max_num_seqs
    at_least_4 = delta(before, after, "gateway_batch_size_count") - delta(
        before, after, "gateway_batch_size_bucket", le="3.0"
    )
    assert at_least_4 > 0
    assert value(after, "gateway_requests_running") == 0
    assert value(after, "gateway_batch_occupancy_ratio") == 0
    assert 0 <= value(after, "gateway_kv_cache_usage_ratio") <= 1


def test_truncation_and_rejections_are_counted(http: httpx.Client) -> None:
    before = scrape(http)
    r = http.post("/v1/completions", json={"prompt": [1] + [450] * 2099, "max_tokens": 16})
    assert r.status_code == 200 and r.headers["x-truncated-prompt-tokens"] == "68"
    assert http.post("/v1/completions", json={"prompt": "x", "max_tokens": 2048}).status_code == 400
    assert http.post("/v1/completions", json={"prompt": "x", "model": "nope"}).status_code == 404
    assert http.post("/v1/completions", json={"prompt": "x", "n": 0}).status_code == 400
    after = scrape(http)
    assert delta(before, after, "gateway_truncated_requests_total") == 1
    assert delta(before, after, "gateway_truncated_tokens_total") == 68
    assert delta(before, after, "gateway_rejected_requests_total", reason="context_length") == 1
    assert delta(before, after, "gateway_rejected_requests_total", reason="model_not_found") == 1
    assert delta(before, after, "gateway_rejected_requests_total", reason="invalid_request") == 1
    assert (
        delta(before, after, "gateway_requests_total", endpoint="/v1/completions", status="400")
        == 2
    )


def test_lifecycle_and_vllm_metrics_are_exposed(http: httpx.Client) -> None:
    s = scrape(http)
    assert value(s, "gateway_ready") == 1
    assert value(s, "gateway_phase", phase="ready") == 1
    assert value(s, "gateway_phase", phase="loading") == 0
    assert value(s, "gateway_phase_duration_seconds", phase="loading") > 0
    names = {name for name, _ in s}
    for name in (
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "vllm:kv_cache_usage_perc",
    ):
        assert name in names


def test_every_metric_has_help_and_promtool_accepts_them(http: httpx.Client) -> None:
    promtool = PROMETHEUS / "promtool"
    assert promtool.exists(), f"{promtool} missing: run `make setup`"
    text = http.get("/metrics").text
    ours = [f for f in text_string_to_metric_families(text) if f.name.startswith("gateway_")]
    assert len(ours) >= 30, [f.name for f in ours]  # promtool is given our families, not nothing
    for family in ours:
        assert family.documentation, family.name
    gateway_text = "\n".join(line for line in text.splitlines() if "gateway_" in line) + "\n"
    r = subprocess.run(
        [str(promtool), "check", "metrics"], input=gateway_text, capture_output=True, text=True
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.strip() == "" and r.stderr.strip() == ""


@pytest.fixture
def prometheus(gateway: Gateway, tmp_path: Path) -> Iterator[str]:
    binary = PROMETHEUS / "prometheus"
    assert binary.exists(), f"{binary} missing: run `make setup`"
    target = gateway.url.removeprefix("http://")
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        f"  - job_name: gateway\n    static_configs: [{{targets: ['{target}']}}]\n"
    )
    port = free_port()
    proc = subprocess.Popen(
        [
            str(binary),
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        # Prometheus answers 503 "Service Unavailable" until its TSDB is open;
        # queries before /-/ready returns 200 are not JSON.
        wait_ok(f"{url}/-/ready", 60, lambda: proc.poll() is None)
        yield url
    finally:
        proc.terminate()
        proc.wait(30)


def test_real_prometheus_answers_the_dashboard_queries(
    prometheus: str, client: openai.OpenAI
) -> None:
    queries = {
        "ttft_p95": "histogram_quantile(0.95, sum by (le) "
        "(rate(gateway_time_to_first_token_seconds_bucket[30s])))",
        "tpot_p95": "histogram_quantile(0.95, sum by (le) "
        "(rate(gateway_time_per_output_token_seconds_bucket[30s])))",
        "occupancy": "max_over_time(gateway_batch_occupancy_ratio[30s])",
        "token_rate": "sum(rate(gateway_generation_tokens_total[30s]))",
    }
    found: dict[str, float] = {}
    # Traffic flows all the time (one request after another in a thread), so
    # that every scrape sees a running batch and rates over the window exist.
    stop = threading.Event()

    def traffic() -> None:
        while not stop.is_set():
            client.completions.create(
                model=MODEL_NAME, prompt="Hi", max_tokens=64, extra_body={"ignore_eos": True}
            )

    worker = threading.Thread(target=traffic)
    worker.start()
    try:
        deadline = time.monotonic() + 60
        while len(found) < len(queries) and time.monotonic() < deadline:
            for name, q in queries.items():
                r = httpx.get(f"{prometheus}/api/v1/query", params={"query": q}, timeout=5)
                assert r.status_code == 200, r.text
                body = r.json()
                assert body["status"] == "success", json.dumps(body)
                for series in body["data"]["result"]:
                    v = float(series["value"][1])
                    if v == v and v > 0:  # not NaN
                        found[name] = v
            time.sleep(0.5)
    finally:
        stop.set()
        worker.join(60)
    assert set(found) == set(queries), found
    assert found["occupancy"] <= 1


# What the Gateway API Inference Extension's model-server protocol
# (docs/proposals/003-model-server-protocol, v1.6.0) asks of a vLLM server:
# the endpoint picker reads these names. LoRA metrics do not apply (no adapters).
PICKER_METRICS = {
    "vllm:num_requests_waiting": "gauge",  # TotalQueuedRequests
    "vllm:num_requests_running": "gauge",  # TotalRunningRequests
    "vllm:kv_cache_usage_perc": "gauge",  # KVCacheUtilization
    "vllm:cache_config_info": "gauge",  # BlockSize, NumGPUBlocks (optional)
}


def test_the_endpoint_pickers_metrics_are_exported(http: httpx.Client) -> None:
    families = {f.name: f for f in text_string_to_metric_families(http.get("/metrics").text)}
    for name, kind_ in PICKER_METRICS.items():
        assert name in families, name
        assert families[name].type == kind_, (name, families[name].type)
        assert families[name].samples, name
    info = families["vllm:cache_config_info"].samples[0].labels
    assert int(info["block_size"]) > 0 and int(info["num_gpu_blocks"]) > 0

    # /metrics/epp: the same families alone, for the picker's 50 ms scrapes.
    r = http.get("/metrics/epp")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    picker = {f.name: f for f in text_string_to_metric_families(r.text)}
    assert set(picker) == set(PICKER_METRICS)
    for name in PICKER_METRICS:
        assert picker[name].type == families[name].type
        assert [s.labels for s in picker[name].samples] == [
            s.labels for s in families[name].samples
        ]
    assert len(r.content) * 10 < len(http.get("/metrics").content)

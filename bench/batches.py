"""What a batch costs online traffic, and how fast it runs (#36):

    python -m bench.batches [--lines 5000] [--rounds 3] [--seconds 30]

Each round, alternated: vLLM's offline runner (`run_batch`) on a file of
chat lines, then the gateway on the same file:
1. Throughput: the batch alone on the gateway (created -> completed, the
   SDK polling) against run_batch's own batch time (its progress bar's
   elapsed time, startup left out); output tokens per second, and the
   ratio (target >= 0.9).
2. Online impact: a steady interactive load (open loop, `--rate` streamed
   completions per second) alone for `--seconds`, then the same load while
   a batch of the same file runs; online p50 TTFT and tok/s each, the ratio
   of the TTFTs (target <= 1.2), and the engine's output tokens per second
   in that window (online + batch lines) against run_batch's ceiling
   (target >= 0.9 busy).
vLLM 0.32's run_batch serves only chat lines (not /v1/completions), so the
file is chat, with the MobileLLaMA template for both.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import openai

from bench.engine_args import as_cli_flags, engine_kwargs
from bench.run import MODEL, NAME
from bench.servers import gateway

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / "app" / "completion" / "chat_templates" / "mobilellama-v1.jinja"
MAX_TOKENS = 16  # a label, a score: what bulk work on a small model answers


def batch_file(path: Path, lines: int) -> Path:
    with path.open("w") as f:
        for i in range(lines):
            ask = {"role": "user", "content": f"Label document {i}: the cat sat."}
            body = {"model": NAME, "max_tokens": MAX_TOKENS, "ignore_eos": True,
                    "temperature": 0, "messages": [ask]}  # fmt: skip
            line = {"custom_id": f"doc-{i}", "method": "POST", "url": "/v1/chat/completions"}
            f.write(json.dumps({**line, "body": body}) + "\n")
    return path


def run_batch(infile: Path, logs: Path, label: str) -> float:
    """vLLM's offline runner on the file; its batch seconds (startup left out)."""
    out, log = logs / f"{label}.out.jsonl", logs / f"{label}.log"
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.run_batch", "-i", str(infile),
           "-o", str(out), "--chat-template", str(TEMPLATE),
           *as_cli_flags(engine_kwargs(MODEL))]  # fmt: skip
    with log.open("wb") as f:
        subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, check=True)
    answered = sum(1 for x in out.open() if json.loads(x)["response"]["status_code"] == 200)
    assert answered == sum(1 for _ in infile.open()), f"run_batch answered {answered}: see {log}"
    # tqdm's last "Running batch: 100% ... [MM:SS<00:00" (or H:MM:SS) is the batch's time
    found = re.findall(r"100%[^\[]*\[((?:\d+:)?\d+:\d+)<", log.read_text(errors="replace"))
    assert found, f"no progress bar in {log}"
    seconds = 0.0
    for part in found[-1].split(":"):
        seconds = seconds * 60 + float(part)
    return seconds


def submit(client: openai.OpenAI, infile: Path) -> str:
    f = client.files.create(file=("in.jsonl", io.BytesIO(infile.read_bytes())), purpose="batch")
    return client.batches.create(
        input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h"
    ).id


def done_lines(client: openai.OpenAI, batch_id: str) -> tuple[str, int]:
    b = client.batches.retrieve(batch_id)
    assert b.request_counts is not None
    return b.status, b.request_counts.completed


def batch_alone(client: openai.OpenAI, infile: Path) -> float:
    t0 = time.monotonic()
    batch_id = submit(client, infile)
    while done_lines(client, batch_id)[0] != "completed":
        time.sleep(0.25)
    return time.monotonic() - t0


async def online(url: str, seconds: float, rate: float) -> dict[str, float]:
    """Open-loop streamed completions at `rate`/s for `seconds`: p50 TTFT, tok/s."""
    ttfts: list[float] = []
    tokens = [0]
    async with httpx.AsyncClient(base_url=url, timeout=600) as c:

        async def one(i: int) -> None:
            body = {"model": NAME, "prompt": f"Chat {i}: hello", "max_tokens": 32,
                    "ignore_eos": True, "stream": True}  # fmt: skip
            t0 = time.monotonic()
            first = True
            async with c.stream("POST", "/v1/completions", json=body) as r:
                async for line in r.aiter_lines():
                    if line.startswith("data:") and '"text"' in line:
                        if first:
                            ttfts.append(time.monotonic() - t0)
                            first = False
                        tokens[0] += 1

        t0 = time.monotonic()
        tasks = []
        for i in range(int(seconds * rate)):
            await asyncio.sleep(max(0.0, t0 + i / rate - time.monotonic()))
            tasks.append(asyncio.create_task(one(i)))
        await asyncio.gather(*tasks)
        window = time.monotonic() - t0
    return {"ttft_p50_ms": statistics.median(ttfts) * 1e3, "tok_s": tokens[0] / window,
            "window_s": window}  # fmt: skip


def with_batch(client: openai.OpenAI, url: str, infile: Path, seconds: float, rate: float):  # type: ignore[no-untyped-def]
    batch_id = submit(client, infile)
    time.sleep(5)  # the batch fills its places
    _, before = done_lines(client, batch_id)
    r = asyncio.run(online(url, seconds, rate))
    status, after = done_lines(client, batch_id)
    client.batches.cancel(batch_id)
    assert status == "in_progress", "the batch ended inside the window: use more lines"
    r["batch_tok_s"] = (after - before) * MAX_TOKENS / r["window_s"]
    return r


def one_round(
    infile: Path, logs: Path, i: int, seconds: float, rate: float, share: str
) -> dict[str, Any]:
    rb = run_batch(infile, logs, f"run_batch-{i}")
    lines = sum(1 for _ in infile.open())
    env = {"GATEWAY_CHAT_TEMPLATE": "mobilellama-v1", "GATEWAY_DATA_DIR": str(logs / f"state-{i}"),
           "GATEWAY_BATCH_SHARE": share}  # fmt: skip
    gw = gateway(MODEL, logs / f"gateway-{i}.log", NAME, env=env)
    gw.wait_ready()
    try:
        client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key="none", max_retries=0)
        alone_s = batch_alone(client, infile)
        quiet = asyncio.run(online(gw.url, seconds, rate))
        busy = with_batch(client, gw.url, infile, seconds, rate)
    finally:
        gw.stop()
    ceiling = lines * MAX_TOKENS / rb
    return {
        "run_batch_s": rb, "gateway_batch_s": alone_s,
        "run_batch_tok_s": ceiling, "gateway_batch_tok_s": lines * MAX_TOKENS / alone_s,
        "throughput_ratio": rb / alone_s,
        "online_alone": quiet, "online_with_batch": busy,
        "ttft_ratio": busy["ttft_p50_ms"] / quiet["ttft_p50_ms"],
        "engine_busy": (busy["tok_s"] + busy["batch_tok_s"]) / ceiling,
    }  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lines", type=int, default=5000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=30)
    p.add_argument("--rate", type=float, default=2.0, help="online requests per second")
    p.add_argument("--share", default="0.75", help="GATEWAY_BATCH_SHARE")
    p.add_argument("--out", type=Path)
    a = p.parse_args()
    logs = Path(tempfile.mkdtemp(prefix="bench-batches-"))
    infile = batch_file(logs / "in.jsonl", a.lines)
    rounds = [one_round(infile, logs, i, a.seconds, a.rate, a.share) for i in range(a.rounds)]
    keys = ("throughput_ratio", "ttft_ratio", "engine_busy", "run_batch_tok_s",
            "gateway_batch_tok_s")  # fmt: skip
    report = {"lines": a.lines, "max_tokens": MAX_TOKENS, "rate": a.rate, "share": a.share,
              "rounds": rounds,
              "median": {k: statistics.median(r[k] for r in rounds) for k in keys}}  # fmt: skip
    text = json.dumps(report, indent=2)
    print(text)
    print(f"logs: {logs}", file=sys.stderr)
    if a.out:
        a.out.write_text(text + "\n")


if __name__ == "__main__":
    main()

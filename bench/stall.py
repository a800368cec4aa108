"""How long one long prompt stalls the other streams. Against a running server:

    python -m bench.stall http://127.0.0.1:8000 --prompt-bytes 1000000

A greedy stream of --max-tokens tokens runs alone, then again while a second
client sends prompts of --prompt-bytes characters of text to /tokenize, one
after another. Tokenizing that text takes a long time (about 0.85 s per MB
on the 2-core development machine); if it ran on the server's event loop,
every stream would stop for that long. Prints one JSON object: the stream's
largest and median gap between chunks, alone and under the long prompts, and
how many long prompts were served meanwhile.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import threading
import time
from typing import Any

import httpx


def stream_gaps(url: str, max_tokens: int) -> list[float]:
    body = {"prompt": [1], "max_tokens": max_tokens, "ignore_eos": True, "stream": True}
    stamps: list[float] = []
    with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=300) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if line.startswith("data:") and line[5:].strip() != "[DONE]":
                stamps.append(time.perf_counter())
    return [b - a for a, b in itertools.pairwise(stamps)]


def summary(gaps: list[float]) -> dict[str, float]:
    return {
        "max_gap_ms": round(max(gaps) * 1000, 1),
        "median_gap_ms": round(statistics.median(gaps) * 1000, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("url")
    ap.add_argument("--prompt-bytes", type=int, default=1_000_000)
    ap.add_argument("--max-tokens", type=int, default=300)
    a = ap.parse_args()
    url = a.url.rstrip("/")
    sentence = "the capital of france is paris and it has many museums "
    text = (sentence * (a.prompt_bytes // len(sentence) + 1))[: a.prompt_bytes]

    stream_gaps(url, 8)  # warm the path
    alone = stream_gaps(url, a.max_tokens)

    stop = threading.Event()
    served: list[float] = []

    def long_prompts() -> None:
        with httpx.Client(base_url=url, timeout=120) as c:
            while not stop.is_set():
                t = time.perf_counter()
                c.post("/tokenize", json={"prompt": text}).raise_for_status()
                served.append(time.perf_counter() - t)

    loader = threading.Thread(target=long_prompts)
    loader.start()
    try:
        loaded = stream_gaps(url, a.max_tokens)
    finally:
        stop.set()
        loader.join()
    report: dict[str, Any] = {
        "prompt_bytes": a.prompt_bytes,
        "alone": summary(alone),
        "with_long_prompts": summary(loaded),
        "long_prompts_served": len(served),
        "long_prompt_seconds": round(statistics.median(served), 3) if served else None,
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()

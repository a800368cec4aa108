"""Peak memory of settling a big batch: a 50,000-line batch whose every
answer carries logprobs (about 3 KB of JSON a line, ~150 MB of output) run
through the real batch runner and a real SQLite store, with a scripted line
runner (no engine: what is measured is the runner and the store). Prints
the process's peak RSS before the settle and after it, the output's size
and the settle's seconds, as JSON.

    python -m bench.batch_memory [--lines 50000] [--dir /tmp/x]

Run it under another checkout (PYTHONPATH=<that checkout>) to compare.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

from app.batches.backends import SqliteStore
from app.batches.records import Line
from app.batches.runner import BatchRunner


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def answer(i: int) -> dict[str, Any]:
    """A completion's body with logprobs (16 tokens, top 5 each)."""
    tokens = [f" tok{i % 97}_{k}" for k in range(16)]
    top = [{f" alt{j}": -0.1 * j for j in range(5)} for _ in tokens]
    return {
        "id": f"cmpl-{i}", "object": "text_completion", "created": 1, "model": "m",
        "choices": [{"index": 0, "text": "".join(tokens), "finish_reason": "length",
                     "logprobs": {"tokens": tokens, "token_logprobs": [-0.5] * 16,
                                  "top_logprobs": top, "text_offset": list(range(16))}}],
        "usage": {"prompt_tokens": 8, "completion_tokens": 16, "total_tokens": 24},
    }  # fmt: skip


async def run(lines: int, where: Path) -> dict[str, Any]:
    store = SqliteStore(where / "b.db")
    batch = {"id": "b", "object": "batch", "endpoint": "/v1/completions",
             "status": "in_progress", "created_at": int(time.time()),
             "expires_at": time.time() + 86400}  # fmt: skip
    store.create_batch(batch, "t", [Line("b", i, f"c{i}", {"i": i}) for i in range(lines)])

    async def run_line(tenant: str, batch_id: str, endpoint: str, body: dict[str, Any]) -> Any:
        return answer(body["i"])

    runner = BatchRunner(store, run_line, lambda: 64, ahead=256)
    marks: dict[str, float] = {}
    settle = runner._settle  # the settle of either version, timed where it starts

    async def timed(*args: Any, **kw: Any) -> bool:
        if store.counts("b").completed == lines and "before" not in marks:
            marks["before"], marks["started"] = peak_mib(), time.monotonic()
        return await settle(*args, **kw)

    runner._settle = timed  # type: ignore[method-assign]
    while True:
        await runner.step()
        await asyncio.sleep(0)
        done = store.batch("b")
        assert done is not None
        if done["status"] == "completed":
            break
    before = marks["before"]
    took = time.monotonic() - marks["started"]
    size = (store.file(done["output_file_id"], "t") or {}).get("bytes", 0)
    return {"lines": lines, "output_mib": round(size / 2**20, 1),
            "peak_rss_before_settle_mib": round(before, 1),
            "peak_rss_after_settle_mib": round(peak_mib(), 1),
            "settle_s": round(took, 2)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lines", type=int, default=50_000)
    parser.add_argument("--dir", type=Path, default=None)
    args = parser.parse_args()
    where = args.dir or Path(tempfile.mkdtemp(prefix="batch-memory-"))
    print(json.dumps(asyncio.run(run(args.lines, where))))


if __name__ == "__main__":
    main()

"""What tracing costs the serving process: the same load with tracing off,
on with every request sampled (always_on), and on with 10% sampled
(parentbased_traceidratio 0.1), exported to a real OTLP/HTTP receiver.

    python -m bench.tracing [--concurrency 8 64] [--rounds 3]

vLLM's benchmark client (random 128 in / 64 out, ignore_eos, streaming), as
`make bench`; per round the three modes run in turn (A B C A B C ...), each
on a fresh gateway, and the report gives each round's API-process CPU per
1000 output tokens and tok/s, the medians, and the ratios to off.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path
from typing import Any

from bench.run import MODEL, NAME, measured
from bench.servers import gateway
from testkit.otlp import HttpReceiver

MODES: dict[str, dict[str, str]] = {
    "off": {},
    "always_on": {"OTEL_TRACES_SAMPLER": "always_on"},
    "ratio_0.1": {
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": "0.1",
    },
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--concurrency", type=int, nargs="+", default=[8, 64])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args()
    logs = Path(tempfile.mkdtemp(prefix="bench-tracing-"))
    receiver = HttpReceiver()
    runs: dict[str, dict[int, list[dict[str, Any]]]] = {m: {} for m in MODES}
    try:
        for turn in range(a.rounds):
            for mode, env in MODES.items():
                if env:
                    env = {
                        **env,
                        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"{receiver.endpoint}/v1/traces",
                    }
                s = gateway(MODEL, logs / f"{mode}-{turn}.log", NAME, name=mode, env=env)
                try:
                    s.wait_ready()
                    for c in a.concurrency:
                        r = measured(s, c)
                        runs[mode].setdefault(c, []).append(r)
                        print(
                            f"round {turn} {mode:<10} c={c:<3} {r['output_throughput']:7.1f} tok/s "
                            f"api cpu {r['api_cpu_ms_per_1k_tokens']:.1f} ms/1k tok",
                            flush=True,
                        )
                finally:
                    s.stop()
    finally:
        receiver.close()
    report: dict[str, Any] = {"spans_received": len(receiver.spans), "runs": runs}
    for c in a.concurrency:
        med = {
            m: {
                k: statistics.median(r[k] for r in runs[m][c])
                for k in ("output_throughput", "api_cpu_ms_per_1k_tokens")
            }
            for m in MODES
        }
        off = med["off"]
        report[f"c{c}"] = {
            m: {
                **v,
                "cpu_vs_off": v["api_cpu_ms_per_1k_tokens"] / off["api_cpu_ms_per_1k_tokens"],
                "tok_s_vs_off": v["output_throughput"] / off["output_throughput"],
            }
            for m, v in med.items()
        }
        print(f"c={c}", json.dumps(report[f"c{c}"]), flush=True)
    text = json.dumps(report, indent=2, default=str)
    if a.out is not None:
        a.out.write_text(text + "\n")


if __name__ == "__main__":
    main()

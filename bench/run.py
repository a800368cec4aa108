"""make bench: the gateway vs vLLM's OpenAI server vs the in-process ceiling.

Same machine, same run, same client (vLLM's benchmark client), identical
engine arguments; servers alternate A B A B per concurrency level and the
report gives medians and ratios. Writes bench/results/<date>.json, .md, .png.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import psutil

from bench.client import run_serve_benchmark
from bench.engine_args import engine_kwargs
from bench.scaling import LEVELS as SCALING_LEVELS
from bench.scaling import markdown as scaling_markdown
from bench.scaling import scaling
from bench.servers import Server, gateway, vllm_server

ROOT = Path(__file__).resolve().parent.parent
MODEL = str(ROOT / ".cache" / "models" / "tiny-mobilellama")
NAME = "tiny-mobilellama"


def prompts_for(c: int) -> int:
    return max(16, 4 * c)


def median_of(runs: list[dict[str, Any]], key: str) -> float:
    return float(statistics.median(r[key] for r in runs))


def rss_mb(server: Server) -> float:
    """The server process itself; its engine-core child is excluded."""
    return float(psutil.Process(server.proc.pid).memory_info().rss) / 2**20


def cpu_seconds(server: Server) -> tuple[float, float]:
    """(the API process, its engine-core children) user + system CPU seconds so far."""
    api = psutil.Process(server.proc.pid)
    times = api.cpu_times()
    engine = 0.0
    for child in api.children(recursive=True):
        try:
            t = child.cpu_times()
        except psutil.NoSuchProcess:
            continue
        engine += t.user + t.system
    return times.user + times.system, engine


def measured(
    server: Server,
    c: int,
    prompts: int | None = None,
    input_len: int = 128,
    output_len: int = 64,
    lora_modules: list[str] | None = None,
) -> dict[str, Any]:
    """One benchmark run, with the CPU each process spent per 1000 output tokens:
    the serving layer's own cost, steadier than tok/s on a shared machine."""
    api0, engine0 = cpu_seconds(server)
    n = prompts or prompts_for(c)
    r = run_serve_benchmark(
        server.url, NAME, MODEL, c, n, input_len, output_len, lora_modules=lora_modules
    )
    api1, engine1 = cpu_seconds(server)
    tokens = r.get("total_output_tokens") or r["completed"] * output_len
    r["api_cpu_ms_per_request"] = (api1 - api0) * 1e3 / max(1, r["completed"])
    r["api_cpu_ms_per_1k_tokens"] = (api1 - api0) * 1e6 / tokens
    r["engine_cpu_ms_per_1k_tokens"] = (engine1 - engine0) * 1e6 / tokens
    return r


def inprocess(levels: list[int], rounds: int) -> dict[int, list[dict[str, Any]]]:
    out: dict[int, list[dict[str, Any]]] = {c: [] for c in levels}
    for _ in range(rounds):
        r = subprocess.run(
            [
                sys.executable,
                "-m",
                "bench.inprocess",
                "--model",
                MODEL,
                "--concurrency",
                *map(str, levels),
                "--prompts",
                json.dumps({c: prompts_for(c) for c in levels}),
            ],
            capture_output=True,
            text=True,
            cwd=ROOT,
            check=True,
        )
        for line in r.stdout.splitlines():
            if line.startswith("{"):
                row = json.loads(line)
                out[row["concurrency"]].append(row)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 64])
    p.add_argument("--rounds", type=int, default=2, help="A B alternations per level")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    p.add_argument(
        "--scaling",
        type=int,
        nargs="*",
        default=SCALING_LEVELS,
        help="stream counts for the memory / loop-lag table (none: skip it)",
    )
    a = p.parse_args()

    logs = Path(tempfile.mkdtemp(prefix="bench-"))
    report: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "engine_args": engine_kwargs(MODEL),
        "workload": {
            "dataset": "random",
            "input_len": 128,
            "output_len": 64,
            "ignore_eos": True,
            "prompts": {c: prompts_for(c) for c in a.concurrency},
        },
        "startup_seconds": {},
        "rss_mb": {},
    }
    runs: dict[str, dict[int, list[dict[str, Any]]]] = {"gateway": {}, "vllm-server": {}}
    # One server alive at a time (an idle vLLM engine still spins a core), and
    # alternated A B A B; each serves every concurrency level per turn.
    for turn in range(a.rounds):
        for start in (gateway, vllm_server):
            s = start(MODEL, logs / f"{start.__name__}-{turn}.log", NAME)
            try:
                report["startup_seconds"].setdefault(s.name, []).append(round(s.wait_ready(), 1))
                for c in a.concurrency:
                    r = measured(s, c)
                    runs[s.name].setdefault(c, []).append(r)
                    print(
                        f"c={c:<3} {s.name:<12} {r['output_throughput']:8.1f} tok/s "
                        f"ttft {r['median_ttft_ms']:.1f} ms tpot {r['median_tpot_ms']:.2f} ms "
                        f"api cpu {r['api_cpu_ms_per_1k_tokens']:.0f} ms/1k tok",
                        flush=True,
                    )
                report["rss_mb"].setdefault(s.name, []).append(round(rss_mb(s), 1))
            finally:
                s.stop()
    runs["in-process"] = inprocess(a.concurrency, a.rounds)
    for c in a.concurrency:
        for name in runs:
            print(f"c={c:<3} {name:<12} {median_of(runs[name][c], 'output_throughput'):8.1f} tok/s")

    table = []
    for c in a.concurrency:
        row: dict[str, Any] = {"concurrency": c}
        for name, by_c in runs.items():
            row[name] = {k: median_of(by_c[c], k) for k in by_c[c][0] if k != "concurrency"}
        g, v, i = (row[n]["output_throughput"] for n in ("gateway", "vllm-server", "in-process"))
        row["gateway/vllm-server"] = round(g / v, 3)
        row["api_cpu gateway/vllm-server"] = round(
            row["gateway"]["api_cpu_ms_per_1k_tokens"]
            / row["vllm-server"]["api_cpu_ms_per_1k_tokens"],
            3,
        )
        row["gateway/in-process"] = round(g / i, 3)
        row["vllm-server/in-process"] = round(v / i, 3)
        table.append(row)
    report["results"] = table
    report["raw"] = runs
    if a.scaling:
        report["scaling"] = scaling(a.scaling, logs)

    a.out.mkdir(parents=True, exist_ok=True)
    stem = a.out / dt.date.today().isoformat()
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    stem.with_suffix(".md").write_text(markdown(report))
    plot(report, stem.with_suffix(".png"))
    print(markdown(report))
    print(f"written: {stem}.json .md .png")


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"# Benchmark {report['date']}",
        "",
        "vLLM's benchmark client, random 128 in / 64 out, ignore_eos, streaming; medians of "
        "alternating runs. Engine arguments (all contenders):",
        "",
        f"`{json.dumps(report['engine_args'])}`",
        "",
        "| c | gateway tok/s | vLLM server tok/s | in-process tok/s | gateway / vLLM | "
        "gateway / in-process | TTFT p50 gw / vLLM (ms) | TPOT p50 gw / vLLM (ms) "
        "| API-process CPU per 1k output tokens gw / vLLM / in-process (ms) "
        "| CPU ratio gw / vLLM | engine-core CPU per 1k gw / vLLM (ms) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        g, v, i = r["gateway"], r["vllm-server"], r["in-process"]
        lines.append(
            f"| {r['concurrency']} | {g['output_throughput']:.0f} | {v['output_throughput']:.0f} "
            f"| {i['output_throughput']:.0f} | {r['gateway/vllm-server']:.2f} "
            f"| {r['gateway/in-process']:.2f} "
            f"| {g['median_ttft_ms']:.1f} / {v['median_ttft_ms']:.1f} "
            f"| {g['median_tpot_ms']:.2f} / {v['median_tpot_ms']:.2f} "
            f"| {g['api_cpu_ms_per_1k_tokens']:.0f} / {v['api_cpu_ms_per_1k_tokens']:.0f}"
            f" / {i.get('api_cpu_ms_per_1k_tokens', float('nan')):.0f} "
            f"| {r['api_cpu gateway/vllm-server']:.2f} "
            f"| {g['engine_cpu_ms_per_1k_tokens']:.0f} / {v['engine_cpu_ms_per_1k_tokens']:.0f} |"
        )
    if "rss_mb" in report:
        rss = report["rss_mb"]
        lines += [
            "",
            f"Server process RSS after the runs (engine core excluded): gateway "
            f"{rss['gateway']} MB, vLLM server {rss['vllm-server']} MB.",
        ]
    if "startup_seconds" in report:
        st = report["startup_seconds"]
        lines += [f"Time to ready: gateway {st['gateway']} s, vLLM server {st['vllm-server']} s."]
    if report.get("scaling"):
        lines += ["", scaling_markdown(report["scaling"])]
    return "\n".join(lines) + "\n"


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cs = [r["concurrency"] for r in report["results"]]
    fig, axes = plt.subplots(1, 4, figsize=(20, 4.5))
    for name in ("gateway", "vllm-server", "in-process"):
        axes[0].plot(
            cs, [r[name]["output_throughput"] for r in report["results"]], "o-", label=name
        )
    for name in ("gateway", "vllm-server"):
        axes[1].plot(cs, [r[name]["median_ttft_ms"] for r in report["results"]], "o-", label=name)
        axes[2].plot(cs, [r[name]["median_tpot_ms"] for r in report["results"]], "o-", label=name)
        axes[3].plot(
            cs, [r[name]["api_cpu_ms_per_1k_tokens"] for r in report["results"]], "o-", label=name
        )
    for ax, title in zip(
        axes,
        (
            "output tokens/s",
            "median TTFT (ms)",
            "median TPOT (ms)",
            "API-process CPU ms per 1k output tokens",
        ),
        strict=True,
    ):
        ax.set_xscale("log", base=2)
        ax.set_xticks(cs, [str(c) for c in cs])
        ax.set_xlabel("concurrency")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    main()

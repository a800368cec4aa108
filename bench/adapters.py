"""Task adapters: the gateway beside vLLM's OpenAI server holding the same
8 adapters with max_loras 4 (on the gateway's cpu engine arguments):

    python -m bench.adapters [--rounds 3] [--concurrency 16] [--out FILE]

Traffic (vLLM's benchmark client, 128 in / 64 out, ignore_eos): over the
base model only, over 1 adapter, over 8 adapters round-robin (more than the
4 device slots: LRU swapping). Output tok/s and API-process CPU per 1000
output tokens, the servers alternated A B per round, each round's figure
and the median. Then adapter load time: one more adapter loaded through
each server's load endpoint (vLLM's with VLLM_ALLOW_RUNTIME_LORA_UPDATING),
timed at the client, per round.

The gateway runs base requests through its zero adapter (GATEWAY_LORA_BASE_GUARD,
on by default: vLLM's CPU LoRA ops otherwise give a base request batched
with adapters an adapter's output), so its engine has one slot more and
runs the LoRA kernels on base-only traffic too; `--no-guard` measures
without it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from safetensors.numpy import save_file

from app.engine.zero_lora import LINGER
from bench.run import MODEL, NAME, measured
from bench.servers import Server, gateway, vllm_server
from scripts.build_adapters import adapter_config, lora_tensors

TARGETS = (["q_proj", "v_proj"], ["o_proj", "gate_proj", "up_proj", "down_proj"])
SCENARIOS = {"base": [], "1 adapter": ["t0"], "8 adapters": [f"t{i}" for i in range(8)]}
ADMIN = "sk-bench-admin"


def write_adapters(into: Path, names: list[str]) -> None:
    config = json.loads((Path(MODEL) / "config.json").read_text())
    for i, name in enumerate(names):
        target = into / name
        target.mkdir(parents=True)
        targets = TARGETS[i % 2]
        (target / "adapter_config.json").write_text(json.dumps(adapter_config(8, targets)))
        tensors: dict[str, np.ndarray] = lora_tensors(config, 300 + i, 8, targets, 1)
        save_file(tensors, str(target / "adapter_model.safetensors"), metadata={"format": "pt"})


def start_gateway(lora: Path, log: Path, guard: bool) -> Server:
    env = {
        "GATEWAY_LORA_DIR": str(lora / "served"),
        "GATEWAY_MAX_LORAS": "4",
        "GATEWAY_MAX_CPU_LORAS": "16",
        "GATEWAY_MAX_LORA_RANK": "16",
        "GATEWAY_LORA_RESCAN": "0",
        "GATEWAY_LORA_BASE_GUARD": "true" if guard else "false",
        "GATEWAY_ADMIN_KEYS": ADMIN,
        "GATEWAY_API_KEYS": "sk-bench",
    }
    return gateway(MODEL, log, NAME, env=env)


def start_vllm(lora: Path, log: Path) -> Server:
    modules = [f"{p.name}={p}" for p in sorted((lora / "served").iterdir())]
    flags = ["--enable-lora", "--max-loras", "4", "--max-cpu-loras", "16", "--max-lora-rank", "16"]
    env = {"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"}
    return vllm_server(MODEL, log, NAME, *flags, "--lora-modules", *modules, env=env)


def load_time(server: Server, name: str, path: Path, ours: bool) -> float:
    headers = {"Authorization": f"Bearer {ADMIN}"} if ours else {}
    body = {"lora_name": name, "lora_path": str(path)}
    started = time.perf_counter()
    r = httpx.post(f"{server.url}/v1/load_lora_adapter", json=body, headers=headers, timeout=120)
    took = time.perf_counter() - started
    assert r.status_code == 200, r.text
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--prompts", type=int, default=96)
    parser.add_argument("--no-guard", action="store_true")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    # The gateway checks keys once any is set (GATEWAY_ADMIN_KEYS here);
    # vLLM's benchmark client sends this one, vLLM's server ignores it.
    os.environ["OPENAI_API_KEY"] = "sk-bench"
    with tempfile.TemporaryDirectory(prefix="bench-adapters-") as tmp:
        lora = Path(tmp)
        write_adapters(lora / "served", [f"t{i}" for i in range(8)])
        write_adapters(lora / "extra", [f"late{r}x{s}" for r in range(args.rounds) for s in "gv"])
        servers = {
            "gateway": start_gateway(lora, lora / "gateway.log", not args.no_guard),
            "vllm": start_vllm(lora, lora / "vllm.log"),
        }
        report: dict[str, Any] = {"rounds": args.rounds, "guard": not args.no_guard, "runs": {}}
        try:
            for s in servers.values():
                s.wait_ready(600, "/health")
            for name, s in servers.items():  # warm both once on every adapter
                measured(s, 8, 16, lora_modules=SCENARIOS["8 adapters"])
                print(f"{name}: warmed", flush=True)
            runs: dict[str, dict[str, list[dict[str, Any]]]] = {
                sc: {n: [] for n in servers} for sc in SCENARIOS
            }
            for r in range(args.rounds):
                for scenario, modules in SCENARIOS.items():
                    order = list(servers) if r % 2 == 0 else list(reversed(servers))
                    for name in order:
                        if not modules:
                            # Steady base-only traffic: past the zero adapter's linger
                            # after the adapter traffic before it (its cost in that
                            # window is measured apart: bench/README.md).
                            time.sleep(LINGER + 1)
                        m = measured(
                            servers[name],
                            args.concurrency,
                            args.prompts,
                            lora_modules=modules or None,
                        )
                        assert m["failed"] == 0, m
                        runs[scenario][name].append(m)
                        print(
                            f"round {r} {scenario:11} {name:8} {m['output_throughput']:8.1f} tok/s "
                            f"api {m['api_cpu_ms_per_1k_tokens']:7.1f} ms/1k tok",
                            flush=True,
                        )
                loads = {}
                for name, s in servers.items():
                    tag = "g" if name == "gateway" else "v"
                    late = f"late{r}x{tag}"
                    loads[name] = load_time(s, late, lora / "extra" / late, name == "gateway")
                runs.setdefault("load", {}).setdefault("rounds", []).append(loads)
                print(f"round {r} load: {loads}", flush=True)
            report["runs"] = runs
            report["summary"] = summary(runs)
            print(json.dumps(report["summary"], indent=2))
        finally:
            for s in servers.values():
                s.stop()
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")


def summary(runs: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for scenario in SCENARIOS:
        g, v = runs[scenario]["gateway"], runs[scenario]["vllm"]
        tok = [x["output_throughput"] for x in g], [x["output_throughput"] for x in v]
        cpu = [x["api_cpu_ms_per_1k_tokens"] for x in g], [x["api_cpu_ms_per_1k_tokens"] for x in v]
        out[scenario] = {
            "tok_s": {"gateway": tok[0], "vllm": tok[1]},
            "api_cpu_ms_per_1k_tok": {"gateway": cpu[0], "vllm": cpu[1]},
            "median_tok_s_ratio": statistics.median(tok[0]) / statistics.median(tok[1]),
            "median_api_cpu_ratio": statistics.median(cpu[0]) / statistics.median(cpu[1]),
        }
    loads = runs["load"]["rounds"]
    out["load_s"] = {n: [x[n] for x in loads] for n in ("gateway", "vllm")}
    return out


if __name__ == "__main__":
    main()

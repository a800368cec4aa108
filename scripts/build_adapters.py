"""Build the fixture's task adapters: tiny PEFT LoRA adapters for the
`tiny-mobilellama` fixture, seeded, byte-identical on every rebuild, no
downloads. Each is `adapter_config.json` + `adapter_model.safetensors`, as
PEFT saves them.

    .cache/adapters/extract@1     rank 8, q_proj v_proj
    .cache/adapters/extract@2     rank 8, q_proj v_proj (other weights: a new version)
    .cache/adapters/classify      rank 4, o_proj gate_proj up_proj down_proj
    .cache/adapters-refused/wide  rank 8, but shaped for a model twice as wide
                                  (what the refusal tests start from)

Usage: python scripts/build_adapters.py [--out DIR] [--model DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import save_file

from app.adapters.check import ModelShape

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / ".cache"
DEFAULT_MODEL = ROOT / ".cache" / "models" / "tiny-mobilellama"

# name -> (directory under --out, seed, rank, target modules, width factor)
ADAPTERS: dict[str, tuple[str, int, int, list[str], int]] = {
    "extract@1": ("adapters", 101, 8, ["q_proj", "v_proj"], 1),
    "extract@2": ("adapters", 102, 8, ["q_proj", "v_proj"], 1),
    "classify": ("adapters", 103, 4, ["o_proj", "gate_proj", "up_proj", "down_proj"], 1),
    "wide": ("adapters-refused", 104, 8, ["q_proj", "v_proj"], 2),
}


def lora_tensors(
    config: dict[str, Any], seed: int, rank: int, targets: list[str], width: int
) -> dict[str, np.ndarray]:
    """lora_A (rank, in) and lora_B (out, rank) per layer and target, fp16:
    large enough that the adapter visibly changes greedy output."""
    rng = np.random.Generator(np.random.PCG64(seed))
    wide = {**config, "hidden_size": config["hidden_size"] * width}
    shapes = ModelShape.from_config(wide).modules  # (in, out), as the gateway checks them
    out: dict[str, np.ndarray] = {}
    for layer in range(config["num_hidden_layers"]):
        for target in targets:
            part = (
                "self_attn" if target.endswith(("q_proj", "k_proj", "v_proj", "o_proj")) else "mlp"
            )
            prefix = f"base_model.model.model.layers.{layer}.{part}.{target}"
            fan_in, fan_out = shapes[target]
            a = rng.standard_normal((rank, fan_in), dtype=np.float32) * 0.1
            b = rng.standard_normal((fan_out, rank), dtype=np.float32) * 0.1
            out[f"{prefix}.lora_A.weight"] = a.astype(np.float16)
            out[f"{prefix}.lora_B.weight"] = b.astype(np.float16)
    return out


def adapter_config(rank: int, targets: list[str]) -> dict[str, Any]:
    return {
        "base_model_name_or_path": "tiny-mobilellama",
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
        "lora_alpha": 2 * rank,
        "lora_dropout": 0.0,
        "modules_to_save": None,
        "peft_type": "LORA",
        "r": rank,
        "target_modules": sorted(targets),
        "task_type": "CAUSAL_LM",
        "use_dora": False,
        "use_rslora": False,
    }


def build(out: Path, model: Path) -> dict[str, str]:
    config = json.loads((model / "config.json").read_text())
    manifest: dict[str, str] = {}
    for name, (where, seed, rank, targets, width) in ADAPTERS.items():
        target = out / where / name
        target.mkdir(parents=True, exist_ok=True)
        files = {
            "adapter_config.json": (
                json.dumps(adapter_config(rank, targets), indent=2, sort_keys=True) + "\n"
            ).encode()
        }
        with tempfile.TemporaryDirectory() as tmp:
            st = Path(tmp) / "adapter_model.safetensors"
            tensors = lora_tensors(config, seed, rank, targets, width)
            save_file(tensors, str(st), metadata={"format": "pt"})
            files["adapter_model.safetensors"] = st.read_bytes()
        for file, data in files.items():
            path = target / file
            if not path.exists() or path.read_bytes() != data:
                path.write_bytes(data)
            manifest[f"{where}/{name}/{file}"] = hashlib.sha256(data).hexdigest()
    (out / "adapters" / "MANIFEST.sha256.json").write_text(
        json.dumps(manifest, indent=2, sort_keys=True) + "\n"
    )
    return manifest


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    args = parser.parse_args()
    if not (args.model / "config.json").is_file():
        sys.exit(f"no fixture model at {args.model}: run scripts/build_fixture.py first")
    build(args.out, args.model)
    print(f"fixture adapters written under {args.out}")


if __name__ == "__main__":
    main()

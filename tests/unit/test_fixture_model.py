"""The fixture model: MobileLLaMA's shape, the real LLaMA tokenizer, reproducible."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.support.gateway import ROOT


def test_tokenizer_gives_llama_ids(tokenizer) -> None:  # type: ignore[no-untyped-def]
    assert tokenizer("The capital of France is").input_ids == [1, 450, 7483, 310, 3444, 338]


def test_tokenizer_round_trips_bytes_through_fallback(tokenizer) -> None:  # type: ignore[no-untyped-def]
    text = "naïve 世界 😀\n  two  spaces"
    ids = tokenizer(text).input_ids
    assert ids[0] == 1
    assert 243 in ids  # <0xF0>, first byte of the emoji: byte fallback was used
    assert tokenizer.decode(ids, skip_special_tokens=True) == text


def test_config_is_mobilellama_shaped(model_dir: Path) -> None:
    cfg = json.loads((model_dir / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLM"]
    assert cfg["vocab_size"] == 32000
    assert cfg["num_key_value_heads"] == cfg["num_attention_heads"]
    assert cfg["hidden_size"] // cfg["num_attention_heads"] == cfg["head_dim"] == 128
    assert cfg["max_position_embeddings"] == 2048
    assert (cfg["rms_norm_eps"], cfg["rope_theta"], cfg["hidden_act"]) == (1e-6, 10000.0, "silu")
    assert (cfg["bos_token_id"], cfg["eos_token_id"]) == (1, 2)
    assert not cfg["attention_bias"] and not cfg["mlp_bias"]


def test_build_is_byte_identical(tmp_path: Path, model_dir: Path) -> None:
    tarball = ROOT / ".cache" / "npm" / "llama-tokenizer-js-1.2.2.tgz"
    for name in ("a", "b"):
        subprocess.run(
            [
                sys.executable,
                "scripts/build_fixture.py",
                "--out",
                str(tmp_path / name),
                "--tarball",
                str(tarball),
            ],
            check=True,
            cwd=ROOT,
            capture_output=True,
        )
    files = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert "model.safetensors" in files and "tokenizer.json" in files
    for name in files:
        a = (tmp_path / "a" / name).read_bytes()
        assert a == (tmp_path / "b" / name).read_bytes(), name
        assert a == (model_dir / name).read_bytes(), name


def test_fixture_adapters_are_byte_identical_on_rebuild(tmp_path: Path, model_dir: Path) -> None:
    for name in ("a", "b"):
        subprocess.run(
            [sys.executable, "scripts/build_adapters.py", "--out", str(tmp_path / name),
             "--model", str(model_dir)],
            check=True, cwd=ROOT, capture_output=True,
        )  # fmt: skip
    files = sorted(
        p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file()
    )
    assert len(files) == 9  # 4 adapters x 2 files, and the manifest
    for rel in files:
        a = (tmp_path / "a" / rel).read_bytes()
        assert a == (tmp_path / "b" / rel).read_bytes(), rel
        assert a == (ROOT / ".cache" / rel).read_bytes(), rel

"""The adapter wing at its edges: a malformed directory is that directory's
refusal and never stops a look (nor leaks a copy); the safetensors library
reads the weights (overlaps, a lora_A without its lora_B); what is not a
regular file, or too big, is refused before it is read; hypothesis over
header bytes and JSON shapes finds only adapters and refusals; a load the
engine refuses is undone; one admin call per name at a time; names are
matched whole."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import struct
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.adapters import admin
from app.adapters.check import AdapterRefused, ModelShape, inspect, read
from app.adapters.files import split_name
from app.errors import Conflict, InvalidRequest
from testkit.fake_engine import FakeEngine
from tests.support.adapters import FIXTURE_ADAPTERS, MODEL_CONFIG, copy_adapter
from tests.unit.test_adapter_registry import _nothing, registry, sample

SHAPE = ModelShape.from_config(json.loads(MODEL_CONFIG.read_text()))
CONFIG = (FIXTURE_ADAPTERS / "extract@1" / "adapter_config.json").read_bytes()  # rank 8, q v


def weights(header: Any, data: bytes = b"", size: int | None = None) -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(raw) if size is None else size) + raw + data


def q_proj(layer: int, which: str, offsets: Any, shape: Any = None) -> dict[str, Any]:
    want = [8, 256] if which == "A" else [256, 8]
    name = f"base_model.model.model.layers.{layer}.self_attn.q_proj.lora_{which}.weight"
    return {name: {"dtype": "F16", "shape": shape or want, "data_offsets": offsets}}


def verdict(files: tuple[bytes, bytes]) -> str:
    try:
        inspect(files, SHAPE, 16)
    except AdapterRefused as exc:
        assert "\n" not in str(exc)
        return exc.reason
    return "adapter"


def write_dir(target: Path, weights_bytes: bytes, config: bytes = CONFIG) -> Path:
    target.mkdir(parents=True)
    (target / "adapter_config.json").write_bytes(config)
    (target / "adapter_model.safetensors").write_bytes(weights_bytes)
    return target


# The header the review found raising TypeError before: offsets as strings.
STRING_OFFSETS = weights(q_proj(0, "A", ["0", "4096"]), bytes(4096))
# RecursionError before: nesting deeper than the JSON parser's stack.
DEEP = weights(b"[" * 100_000 + b"]" * 100_000)


def test_wrong_types_and_deep_nesting_are_refusals() -> None:
    assert verdict((CONFIG, STRING_OFFSETS)) == "format"
    assert verdict((CONFIG, DEEP)) == "format"
    assert verdict((b"[" * 100_000, STRING_OFFSETS)) == "config"
    assert verdict((CONFIG, weights({"x": [1, {"dtype": 3}]}, bytes(8)))) == "format"


def test_overlapping_offsets_and_an_a_without_its_b() -> None:
    a = q_proj(0, "A", [0, 4096])
    overlap = {**a, **q_proj(0, "B", [0, 4096])}
    assert verdict((CONFIG, weights(overlap, bytes(4096)))) == "format"
    # Each A's B: layer 0 has both, layer 1 only its A.
    pairs = {**a, **q_proj(0, "B", [4096, 8192]), **q_proj(1, "A", [8192, 12288])}
    config = json.dumps({**json.loads(CONFIG), "target_modules": ["q_proj"]}).encode()
    with pytest.raises(AdapterRefused, match=r"layers\.1\.q_proj has no lora_B"):
        inspect((config, weights(pairs, bytes(12288))), SHAPE, 16)


def test_not_a_regular_file_or_too_big_is_refused_before_reading(tmp_path: Path) -> None:
    path = copy_adapter("extract@1", tmp_path)
    target = path / "adapter_model.safetensors"
    target.unlink()
    os.mkfifo(target)  # reading it would wait for a writer forever
    with pytest.raises(AdapterRefused, match="not a regular file") as err:
        read(path)
    assert err.value.reason == "format"
    target.unlink()
    target.symlink_to("/dev/zero")  # never ends
    with pytest.raises(AdapterRefused, match="not a regular file"):
        read(path)
    target.unlink()
    shutil.copy(FIXTURE_ADAPTERS / "extract@1" / "adapter_model.safetensors", target)
    size = target.stat().st_size
    with pytest.raises(AdapterRefused, match=f"larger than {size - 1} bytes"):
        read(path, size - 1)
    assert read(path, size)[1] == target.read_bytes()
    assert SHAPE.weights_limit(16) > size


def test_a_cut_file_is_still_told_truncated(tmp_path: Path) -> None:
    good = (FIXTURE_ADAPTERS / "extract@1" / "adapter_model.safetensors").read_bytes()
    assert verdict((CONFIG, good)) == "adapter"
    assert verdict((CONFIG, good[:-100])) == "truncated"
    assert verdict((CONFIG, good + bytes(8))) == "format"


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=60), inner, max_size=4)
    ),
    max_leaves=20,
)
NAMES = st.sampled_from([
    "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight",
    "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight",
    "base_model.model.model.layers.99.self_attn.v_proj.lora_A.weight",
    "__metadata__", "x",
])  # fmt: skip
TENSOR = st.fixed_dictionaries({
    "dtype": st.sampled_from(["F16", "BF16", "F32", "I8", "U8", "bogus"]) | JSON,
    "shape": st.lists(st.integers(-2, 300), max_size=3) | JSON,
    "data_offsets": st.lists(st.integers(-5, 20_000), min_size=0, max_size=3) | JSON,
})  # fmt: skip


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    header=st.dictionaries(NAMES, TENSOR | JSON, max_size=4) | JSON,
    data=st.integers(0, 9000),
    size_delta=st.integers(-3, 3),
)
def test_fuzzed_headers_are_an_adapter_or_a_refusal(
    header: Any, data: int, size_delta: int
) -> None:
    raw = json.dumps(header).encode()
    blob = weights(raw, bytes(data), max(0, len(raw) + size_delta))
    assert verdict((CONFIG, blob)) in {"adapter", "format", "truncated", "target", "shape"}


@settings(max_examples=300, deadline=None)
@given(blob=st.binary(max_size=300), config=JSON)
def test_fuzzed_bytes_are_an_adapter_or_a_refusal(blob: bytes, config: Any) -> None:
    assert verdict((json.dumps(config).encode(), blob)) != "adapter"
    assert verdict((CONFIG, blob)) in {"format", "truncated"}


def test_one_malformed_directory_never_stops_a_look_nor_leaks_copies(tmp_path: Path) -> None:
    async def run() -> None:
        adapters, _, prom = registry(tmp_path)
        lora = tmp_path / "lora"
        write_dir(lora / "broken", STRING_OFFSETS)
        copy_adapter("classify", lora)
        await adapters.rescan("startup")  # raised TypeError before: the start failed
        assert sorted(adapters.by_name) == ["classify"]
        copy_adapter("extract@1", lora)  # added later, beside the broken one
        for _ in range(2):
            await adapters.rescan("SIGHUP")
        assert sorted(adapters.by_name) == ["classify", "extract@1"]
        assert sample(prom, "gateway_adapter_refusals_total", reason="format") == 1  # once
        copies = sorted(p.name for p in adapters.staging.home.iterdir())
        assert len(copies) == 2  # one per served adapter, none left by a look

    asyncio.run(run())


def test_an_unexpected_error_in_one_directory_is_its_refusal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def run() -> None:
        adapters, _, prom = registry(tmp_path)
        copy_adapter("classify", tmp_path / "lora")
        copy_adapter("extract@1", tmp_path / "lora")
        real = adapters.staging.put

        def put(key: str, files: tuple[bytes, bytes]) -> Path:
            if files[0] == CONFIG:  # extract@1's copy fails (a full disk, say)
                raise OSError(28, "No space left on device")
            return real(key, files)

        monkeypatch.setattr(adapters.staging, "put", put)
        await adapters.rescan("test")
        assert sorted(adapters.by_name) == ["classify"]
        assert sample(prom, "gateway_adapter_refusals_total", reason="unreadable") == 1

    asyncio.run(run())


def test_a_load_the_engine_refuses_is_undone(tmp_path: Path) -> None:
    async def run() -> None:
        engine = FakeEngine(_nothing, refuse_adapters=True)
        adapters, _, prom = registry(tmp_path, engine)
        source = copy_adapter("extract@1", tmp_path)
        with pytest.raises(InvalidRequest, match="engine refused"):
            await admin.load(adapters, "extract@1", str(source), "ops")
        assert not (tmp_path / "lora" / "extract@1").exists()  # no replica retries it
        engine.refuse_adapters = False
        await admin.load(adapters, "extract@1", str(source), "ops")  # the name is free
        assert adapters.find("extract@1") is not None
        assert sample(prom, "gateway_adapter_refusals_total", reason="engine") == 1

    asyncio.run(run())


def test_one_admin_call_per_name_at_a_time(tmp_path: Path) -> None:
    async def run() -> None:
        adapters, _, _ = registry(tmp_path)
        source = copy_adapter("extract@1", tmp_path)
        results = await asyncio.gather(
            admin.load(adapters, "extract@1", str(source), "a"),
            admin.load(adapters, "extract@1", str(source), "b"),
            return_exceptions=True,
        )
        assert results[0] is None and isinstance(results[1], Conflict)
        results = await asyncio.gather(
            admin.unload(adapters, "extract@1", "a"),
            admin.load(adapters, "extract@1", str(source), "b"),
            return_exceptions=True,
        )
        assert results[0] is None and isinstance(results[1], Conflict)
        assert adapters.find("extract@1") is None and adapters.changing == set()

    asyncio.run(run())


def test_names_are_matched_whole() -> None:
    assert split_name("extract@3") == ("extract", 3)
    for bad in ("extract\n", "extract@3\n", "a/b", "", "extract@"):
        assert split_name(bad) is None, repr(bad)

"""Every refusal of an adapter before the engine sees it, on real PEFT files:
one line each, with a bounded reason; the fixture adapters pass."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.adapters.check import AdapterRefused, ModelShape, inspect, read
from tests.support.adapters import FIXTURE_ADAPTERS, MODEL_CONFIG, REFUSED, write_adapter

SHAPE = ModelShape.from_config(json.loads(MODEL_CONFIG.read_text()))


def refused(
    path: Path, max_rank: int = 16, ascend: bool = False, shape: ModelShape = SHAPE
) -> AdapterRefused:
    with pytest.raises(AdapterRefused) as err:
        inspect(read(path), shape, max_rank, ascend)
    assert "\n" not in str(err.value)
    return err.value


@pytest.mark.parametrize(
    ("name", "rank", "targets"),
    [
        ("extract@1", 8, ("q_proj", "v_proj")),
        ("classify", 4, ("down_proj", "gate_proj", "o_proj", "up_proj")),
    ],
)
def test_fixture_adapters_pass(name: str, rank: int, targets: tuple[str, ...]) -> None:
    spec = inspect(read(FIXTURE_ADAPTERS / name), SHAPE, 16)
    assert (spec.rank, spec.targets) == (rank, targets)
    other = inspect(read(FIXTURE_ADAPTERS / "extract@2"), SHAPE, 16)
    assert spec.digest != other.digest  # a new version is new content


def test_shapes_of_another_model(tmp_path: Path) -> None:
    err = refused(REFUSED / "wide")
    assert err.reason == "shape" and "[8, 512]" in str(err) and "[8, 256]" in str(err)


def test_rank_above_the_limit(tmp_path: Path) -> None:
    err = refused(write_adapter(tmp_path / "a", 32, ["q_proj"]))
    assert err.reason == "rank" and "GATEWAY_MAX_LORA_RANK (16)" in str(err)
    inspect(read(tmp_path / "a"), SHAPE, 32)  # fine where the limit allows it


def test_target_module_the_model_lacks(tmp_path: Path) -> None:
    path = write_adapter(tmp_path / "a", 4, ["q_proj"])
    config = json.loads((path / "adapter_config.json").read_text())
    config["target_modules"] = ["q_proj", "mamba_in_proj"]
    (path / "adapter_config.json").write_text(json.dumps(config))
    err = refused(path)
    assert err.reason == "target" and "mamba_in_proj" in str(err)


def test_missing_truncated_and_not_safetensors(tmp_path: Path) -> None:
    path = write_adapter(tmp_path / "a", 4, ["q_proj"])
    weights = path / "adapter_model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) - 100])
    assert refused(path).reason == "truncated"
    weights.write_bytes(data[:20])
    assert refused(path).reason == "format"
    weights.write_bytes(b"PK\x03\x04" + bytes(200))  # a zip (torch.save), not safetensors
    assert refused(path).reason == "format"
    weights.unlink()
    err = refused(path)
    assert err.reason == "missing" and "adapter_model.safetensors" in str(err)
    (path / "adapter_config.json").unlink()
    assert refused(path).reason == "missing"


def test_config_that_is_not_a_lora(tmp_path: Path) -> None:
    path = write_adapter(tmp_path / "a", 4, ["q_proj"])
    cfg = path / "adapter_config.json"
    good = json.loads(cfg.read_text())
    for change in (
        {"peft_type": "IA3"},
        {"use_dora": True},
        {"r": 0},
        {"modules_to_save": ["lm_head"]},
    ):
        cfg.write_text(json.dumps({**good, **change}))
        assert refused(path).reason == "config", change
    cfg.write_text("{not json")
    assert refused(path).reason == "config"
    # The config says rank 8, the tensors are rank 4.
    cfg.write_text(json.dumps({**good, "r": 8}))
    assert refused(path).reason == "shape"


def test_ascend_rank_at_most_every_output_slice(tmp_path: Path) -> None:
    # With tensor parallel 8, k_proj's output (2 heads x 128 = 256) is 32
    # wide per device: rank 64 fits on a CPU, not under the Ascend kernel's rule.
    shape = ModelShape.from_config(json.loads(MODEL_CONFIG.read_text()), tensor_parallel=8)
    path = write_adapter(tmp_path / "a", 64, ["k_proj"])
    inspect(read(path), shape, 64, ascend=False)
    err = refused(path, max_rank=64, ascend=True, shape=shape)
    assert err.reason == "ascend_slice" and "k_proj" in str(err) and "(32)" in str(err)
    # o_proj is row-parallel: its output stays whole.
    inspect(read(write_adapter(tmp_path / "b", 64, ["o_proj"])), shape, 64, ascend=True)

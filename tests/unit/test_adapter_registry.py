"""The adapter registry over a real directory of PEFT adapters and a
scripted engine: versions and the alias, drain before unload, retirement,
refusals counted once, the admin's load and unload kept in the directory,
and tenants' model globs (an unknown id and a forbidden one answer alike)."""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from app.adapters import admin
from app.adapters.check import ModelShape
from app.adapters.files import Staging
from app.adapters.registry import Adapters
from app.completion.catalog import Catalog
from app.completion.prepared import ServedModel
from app.engine.protocol import SamplingOptions
from app.errors import InvalidRequest, ModelNotFound
from app.observability.adapter_metrics import AdapterMetrics
from app.tenancy.tenants import Tenant, parse_tenants
from testkit.fake_engine import FakeEngine, ReqOut
from tests.support.adapters import MODEL_CONFIG, REFUSED, copy_adapter, write_adapter


async def _nothing(ids: list[int], options: SamplingOptions) -> AsyncIterator[ReqOut]:
    return
    yield


def registry(
    tmp: Path, engine: FakeEngine | None = None
) -> tuple[Adapters, FakeEngine, CollectorRegistry]:
    engine = engine or FakeEngine(_nothing)
    prom = CollectorRegistry()
    shape = ModelShape.from_config(json.loads(MODEL_CONFIG.read_text()))
    adapters = Adapters(
        engine=engine, shape=shape, max_rank=16, max_loras=2, max_cpu_loras=3,
        staging=Staging(tmp / "state"), metrics=AdapterMetrics(prom, "m"), lora_dir=tmp / "lora",
    )  # fmt: skip
    (tmp / "lora").mkdir(exist_ok=True)
    return adapters, engine, prom


def on_disk(path: str) -> bool:
    return Path(path).is_dir()


def sample(prom: CollectorRegistry, name: str, **labels: str) -> float | None:
    return prom.get_sample_value(name, {"model": "m", **labels})


def test_versions_alias_and_drain_before_unload(tmp_path: Path) -> None:
    async def run() -> None:
        adapters, engine, prom = registry(tmp_path)
        copy_adapter("extract@1", tmp_path / "lora")
        copy_adapter("classify", tmp_path / "lora")
        await adapters.rescan("test")
        v1 = adapters.find("extract")
        assert v1 is not None and v1.name == "extract@1" and v1.ref.id in engine.loaded
        assert adapters.find("classify") is not None and adapters.find("nope") is None
        v1.hold(lambda: None)  # a stream through the alias
        v1.started()
        copy_adapter("extract@2", tmp_path / "lora")
        await adapters.rescan("test")
        v2 = adapters.find("extract")
        assert v2 is not None and v2.name == "extract@2"  # new requests at once
        assert v1.ref.id in engine.loaded  # not mid-stream
        assert adapters.find("extract@1") is v1  # still served by its full name
        v1.release(True, 3, 10)
        await asyncio.sleep(0)
        assert v1.ref.id not in engine.loaded and v2.ref.id in engine.loaded
        assert (
            sample(prom, "gateway_adapter_tokens_total", adapter="extract@1", kind="completion")
            == 7
        )
        assert engine.idle_marks == 1  # nothing through any adapter now
        # The newest going away gives the alias back to the one before.
        shutil.rmtree(tmp_path / "lora" / "extract@2")
        await adapters.rescan("test")
        assert adapters.find("extract") is v1 and adapters.find("extract@2") is None

    asyncio.run(run())


def test_a_retired_adapter_drains_then_its_copy_goes(tmp_path: Path) -> None:
    async def run() -> None:
        adapters, engine, prom = registry(tmp_path)
        copy_adapter("classify", tmp_path / "lora")
        await adapters.rescan("test")
        a = adapters.find("classify")
        assert a is not None and on_disk(a.ref.path)
        assert Path(a.ref.path).parent.parent == tmp_path / "state" / "adapters"
        a.hold(lambda: None)
        shutil.rmtree(tmp_path / "lora" / "classify")
        await adapters.rescan("test")
        assert adapters.find("classify") is None  # no new requests
        assert a.ref.id in engine.loaded and on_disk(a.ref.path)  # the one in flight runs on
        a.release(False, 3, None)
        await asyncio.sleep(0)
        assert a.ref.id not in engine.loaded and not on_disk(a.ref.path)
        assert sample(prom, "gateway_adapter_requests_total", adapter="classify") is None
        # A request checked before the retirement and admitted after: 404, its place back.
        gave_back: list[bool] = []
        with pytest.raises(ModelNotFound):
            a.hold(lambda: gave_back.append(True))
        assert gave_back == [True]

    asyncio.run(run())


def test_new_files_under_the_same_name_are_a_new_adapter(tmp_path: Path) -> None:
    async def run() -> None:
        adapters, engine, _ = registry(tmp_path)
        copy_adapter("extract@1", tmp_path / "lora", "tagger")
        await adapters.rescan("test")
        old = adapters.find("tagger")
        assert old is not None
        await adapters.rescan("test")
        assert adapters.find("tagger") is old  # unchanged: not read again
        shutil.rmtree(tmp_path / "lora" / "tagger")
        copy_adapter("extract@2", tmp_path / "lora", "tagger")
        await adapters.rescan("test")
        new = adapters.find("tagger")
        assert new is not None and new is not old and new.ref.id != old.ref.id
        await asyncio.sleep(0)
        assert old.gone and old.ref.id not in engine.loaded and new.ref.id in engine.loaded

    asyncio.run(run())


def test_refusals_are_counted_once_and_others_keep_serving(tmp_path: Path) -> None:
    async def run() -> None:
        adapters, _, prom = registry(tmp_path)
        copy_adapter("classify", tmp_path / "lora")
        shutil.copytree(REFUSED / "wide", tmp_path / "lora" / "wide")
        write_adapter(tmp_path / "lora" / "big", 32, ["q_proj"])
        (tmp_path / "lora" / "bad name!").mkdir()
        for _ in range(3):
            await adapters.rescan("test")
        assert sorted(adapters.by_name) == ["classify"]
        for reason in ("shape", "rank", "name"):
            assert sample(prom, "gateway_adapter_refusals_total", reason=reason) == 1, reason
        # Fixed in place: served at the next look.
        shutil.rmtree(tmp_path / "lora" / "big")
        write_adapter(tmp_path / "lora" / "big", 8, ["q_proj"])
        await adapters.rescan("test")
        assert "big" in adapters.by_name

    asyncio.run(run())


def test_an_adapter_the_engine_refuses_is_not_served(tmp_path: Path) -> None:
    async def run() -> None:
        engine = FakeEngine(_nothing, refuse_adapters=True)
        adapters, _, prom = registry(tmp_path, engine)
        copy_adapter("classify", tmp_path / "lora")
        await adapters.rescan("test")
        assert adapters.find("classify") is None
        assert sample(prom, "gateway_adapter_refusals_total", reason="engine") == 1
        assert list((tmp_path / "state" / "adapters").rglob("*.safetensors")) == []

    asyncio.run(run())


def test_admin_load_and_unload_live_in_the_directory(tmp_path: Path) -> None:
    async def run() -> None:
        adapters, _, _ = registry(tmp_path)
        await admin.load(adapters, "extract@1", str(copy_adapter("extract@1", tmp_path)), "ops")
        assert (tmp_path / "lora" / "extract@1" / "adapter_model.safetensors").is_file()
        assert adapters.find("extract") is not None
        with pytest.raises(InvalidRequest, match="already loaded"):
            await admin.load(adapters, "extract@1", str(tmp_path / "extract@1"), "ops")
        with pytest.raises(InvalidRequest, match=r"\[8, 512\]"):
            await admin.load(adapters, "wide", str(REFUSED / "wide"), "ops")
        assert not (tmp_path / "lora" / "wide").exists()
        with pytest.raises(InvalidRequest, match="name@N"):
            await admin.load(adapters, "../etc", str(tmp_path / "extract@1"), "ops")
        # A restart (a new registry on the same directory) serves the same set.
        again, _, _ = registry(tmp_path)
        await again.rescan("startup")
        assert sorted(again.by_name) == ["extract@1"]
        await admin.unload(adapters, "extract@1", "ops")
        assert adapters.find("extract") is None and not (tmp_path / "lora" / "extract@1").exists()
        assert len(list((tmp_path / "lora" / ".unloaded").iterdir())) == 1
        with pytest.raises(ModelNotFound):
            await admin.unload(adapters, "extract@1", "ops")

    asyncio.run(run())


TENANTS = """
tenants:
  - name: extractors
    keys: [sk-x]
    models: ["extract*"]
  - name: everyone
    keys: [sk-all]
  - name: ops
    keys: [sk-ops]
    admin: true
    models: ["m"]
"""


def test_tenant_model_globs(tmp_path: Path) -> None:
    async def run() -> None:
        adapters, _, _ = registry(tmp_path)
        for name in ("extract@1", "classify"):
            copy_adapter(name, tmp_path / "lora")
        await adapters.rescan("test")
        catalog = Catalog(ServedModel("m", 2048, 32000), adapters)
        tenants: dict[str, Tenant] = {t.name: t for t, _ in parse_tenants(TENANTS)}
        x, everyone, ops = tenants["extractors"], tenants["everyone"], tenants["ops"]
        assert ops.admin and not x.admin
        assert catalog.resolve("extract", x) == ("extract@1", adapters.find("extract"))
        assert catalog.resolve(None, everyone)[0] == "m"
        errors = []
        for model in ("classify", "m", None, "nope"):
            with pytest.raises(ModelNotFound) as err:
                catalog.resolve(model, x)
            errors.append(err.value.body())
        assert all(e == errors[0] for e in errors)  # forbidden looks like unknown
        assert "'m'" not in str(errors[0])
        with pytest.raises(ModelNotFound, match="serves 'm' and its task adapters"):
            catalog.resolve("nope", everyone)  # a caller who may use all is told the names
        assert [e.id for e in catalog.listing(x)] == ["extract@1", "extract"]
        assert [e.id for e in catalog.listing(ops)] == ["m"]
        assert {e.id for e in catalog.listing(everyone)} == {
            "m",
            "classify",
            "extract@1",
            "extract",
        }

    asyncio.run(run())


def test_lora_settings_and_engine_arguments(tmp_path: Path) -> None:
    from pydantic import ValidationError

    from app.config import Settings
    from app.engine.profiles import engine_kwargs

    s = Settings(lora_modules="a=/x, b=/y")
    assert s.lora_modules == {"a": Path("/x"), "b": Path("/y")} and s.lora_enabled
    assert Settings(lora_modules='{"a": "/x"}').lora_modules == {"a": Path("/x")}
    with pytest.raises(ValidationError):
        Settings(lora_modules="a")
    off = engine_kwargs(Settings(), "cpu")
    assert "enable_lora" not in off and "max_loras" not in off  # no adapters: no LoRA at all
    on = engine_kwargs(Settings(lora_dir=tmp_path, max_loras=2), "npu")
    # One slot more than configured: the base guard's zero adapter.
    assert (on["enable_lora"], on["max_loras"], on["max_cpu_loras"], on["max_lora_rank"]) == (
        True, 3, 9, 16,
    )  # fmt: skip
    bare = engine_kwargs(Settings(lora_dir=tmp_path, lora_base_guard=False), "cpu")
    assert (bare["max_loras"], bare["max_cpu_loras"]) == (4, 8)

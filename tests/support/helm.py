"""Rendering the Helm chart with the real helm binary, for the deploy tests."""

from __future__ import annotations

import subprocess
from typing import Any

import pytest
import yaml

from tests.support.gateway import ROOT

HELM = ROOT / ".cache" / "bin" / "helm"
CHART = ROOT / "deploy" / "helm" / "ascend-llm-gateway"


def helm(*args: str) -> str:
    if not HELM.exists():
        pytest.fail("helm missing: run `make setup`")
    r = subprocess.run([str(HELM), *args], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def render(*sets: str) -> list[dict[str, Any]]:
    args = ["template", "rel", str(CHART), "--namespace", "llm"]
    for s in sets:
        args += ["--set", s]
    return [d for d in yaml.safe_load_all(helm(*args)) if d]


def kind(docs: list[dict[str, Any]], name: str) -> dict[str, Any]:
    (doc,) = [d for d in docs if d["kind"] == name]
    return doc


def container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return kind(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]  # type: ignore[no-any-return]

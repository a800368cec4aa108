"""The Helm chart, rendered by the real helm binary and validated offline."""

from __future__ import annotations

import math
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.support.gateway import ROOT
from tests.support.helm import CHART, HELM, container, helm, kind, render

ALL_ON = [
    "serviceMonitor.enabled=true",
    "prometheusRule.enabled=true",
    "grafanaDashboard.enabled=true",
    "autoscaling.enabled=true",
    "networkPolicy.enabled=true",
    "apiKeys.existingSecret=gateway-keys",
    "model.source=newClaim",
    "model.initContainer.enabled=true",
    "model.initContainer.image=registry.example.com/fetch-weights:1",
    "inferencePool.enabled=true",
    "inferencePool.endpointPicker.name=mobilellama-epp",
    "adapters.enabled=true",
    "adapters.source=newClaim",
    "adapters.initContainer.enabled=true",
    "adapters.initContainer.image=registry.example.com/fetch-adapters:1",
    "adapters.adminKeys.existingSecret=gateway-admins",
]
K8S_VERSIONS = ["1.25.0", "1.35.0"]
CRD_KINDS = {"ServiceMonitor", "PrometheusRule", "InferencePool", "ScaledObject"}


@pytest.mark.parametrize("sets", [[], ALL_ON], ids=["defaults", "all-features"])
def test_helm_lint_strict(sets: list[str]) -> None:
    args = ["lint", "--strict", str(CHART)]
    for s in sets:
        args += ["--set", s]
    assert "0 chart(s) failed" in helm(*args)


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("sets", [[], ALL_ON], ids=["defaults", "all-features"])
def test_rendered_manifests_validate(sets: list[str], version: str, tmp_path: Path) -> None:
    docs = render(*sets)
    core = [d for d in docs if d["kind"] not in CRD_KINDS]
    path = tmp_path / "manifests.yaml"
    path.write_text(yaml.safe_dump_all(core))
    r = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "kubernetes-validate"), "--strict", "-k", version, str(path)],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "ERROR" not in r.stdout + r.stderr and "WARN" not in r.stdout + r.stderr
    assert r.stdout.count("passed") == len(core)


def test_all_features_render_every_kind() -> None:
    kinds = {d["kind"] for d in render(*ALL_ON)}
    assert kinds == {
        "Deployment",
        "Service",
        "ServiceAccount",
        "ConfigMap",
        "PodDisruptionBudget",
        "PersistentVolumeClaim",
        "HorizontalPodAutoscaler",
        "ServiceMonitor",
        "PrometheusRule",
        "NetworkPolicy",
        "InferencePool",
    }


def test_probes_point_at_the_lifecycle_endpoints() -> None:
    c = container(render())
    assert c["startupProbe"]["httpGet"]["path"] == "/health/startup"
    assert c["readinessProbe"]["httpGet"]["path"] == "/health/ready"
    assert c["livenessProbe"]["httpGet"]["path"] == "/health/live"
    assert all(
        c[p]["httpGet"]["port"] == "http"
        for p in ("startupProbe", "readinessProbe", "livenessProbe")
    )


@pytest.mark.parametrize(
    ("load", "capture", "warm", "period"),
    [(120, 300, 60, 5), (60, 60, 30, 5), (600, 30, 30, 7), (1, 0, 0, 10)],
)
def test_startup_probe_budget_covers_load_capture_and_warmup(
    load: int, capture: int, warm: int, period: int
) -> None:
    c = container(
        render(
            f"startup.modelLoadSeconds={load}",
            f"startup.graphCaptureSeconds={capture}",
            f"startup.warmupSeconds={warm}",
            f"startup.periodSeconds={period}",
        )
    )
    probe = c["startupProbe"]
    budget = probe["periodSeconds"] * probe["failureThreshold"]
    assert budget >= load + capture + warm
    assert probe["failureThreshold"] == max(1, math.ceil((load + capture + warm) / period))


@pytest.mark.parametrize(("pre", "drain"), [(5, 60), (0, 30), (20, 300)])
def test_grace_period_covers_prestop_and_drain(pre: int, drain: int) -> None:
    docs = render(f"drain.preStopSleepSeconds={pre}", f"drain.timeoutSeconds={drain}")
    spec = kind(docs, "Deployment")["spec"]["template"]["spec"]
    assert spec["terminationGracePeriodSeconds"] >= pre + drain
    assert container(docs)["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", str(pre)]
    assert kind(docs, "ConfigMap")["data"]["GATEWAY_DRAIN_TIMEOUT"] == str(drain)


def test_npu_resource_in_requests_and_limits() -> None:
    for resource, count in (("huawei.com/Ascend910", 1), ("huawei.com/ascend-1980", 2)):
        c = container(render(f"npu.resourceName={resource}", f"npu.count={count}"))
        assert c["resources"]["requests"][resource] == count
        assert c["resources"]["limits"][resource] == count


def test_secure_defaults_and_writable_caches() -> None:
    docs = render()
    spec = kind(docs, "Deployment")["spec"]["template"]["spec"]
    c = container(docs)
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert spec["automountServiceAccountToken"] is False
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert mounts["/dev/shm"] and mounts["/tmp"] and mounts["/var/cache/gateway"]
    assert mounts["/models/MobileLLaMA-1.4B-Base"]["readOnly"] is True
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["dshm"]["emptyDir"]["medium"] == "Memory"
    assert volumes["weights"]["persistentVolumeClaim"]["claimName"] == "mobilellama-weights"
    for path in ("/usr/local/Ascend/driver", "/usr/local/dcmi", "/usr/local/bin/npu-smi"):
        assert path in mounts
    env = kind(docs, "ConfigMap")["data"]
    assert env["GATEWAY_MODEL"] == "/models/MobileLLaMA-1.4B-Base"
    assert env["GATEWAY_DEVICE"] == "npu"
    assert kind(docs, "Deployment")["spec"]["template"]["spec"]["nodeSelector"] == {
        "accelerator": "huawei-Ascend910"
    }


def test_weights_from_host_path_and_api_keys_from_a_secret() -> None:
    docs = render("model.source=hostPath", "apiKeys.existingSecret=gateway-keys")
    spec = kind(docs, "Deployment")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["weights"]["hostPath"]["path"] == "/data/models/MobileLLaMA-1.4B-Base"
    assert volumes["api-keys"]["secret"]["secretName"] == "gateway-keys"
    env = {e["name"]: e.get("value") for e in container(docs)["env"]}
    assert env["GATEWAY_API_KEY_FILE"] == "/etc/gateway/api-keys/api-keys"


def test_monitoring_objects_carry_the_shipped_rules_and_dashboard() -> None:
    docs = render(*ALL_ON)
    rules = yaml.safe_load((ROOT / "deploy" / "prometheus" / "rules.yaml").read_text())
    assert kind(docs, "PrometheusRule")["spec"] == rules
    dashboard = next(
        d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-dashboard")
    )
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    shipped = (ROOT / "deploy" / "grafana" / "dashboards" / "ascend-llm-gateway.json").read_text()
    assert dashboard["data"]["ascend-llm-gateway.json"].strip() == shipped.strip()
    monitor = kind(docs, "ServiceMonitor")
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"


def test_schema_rejects_bad_values() -> None:
    for bad in ("model.source=s3", "gateway.truncation=right", "npu.count=0", "typo=1"):
        r = subprocess.run(
            [str(HELM), "template", "rel", str(CHART), "--set", bad], capture_output=True, text=True
        )
        assert r.returncode != 0, bad
        assert "schema" in r.stderr, r.stderr


def test_the_batch_store_on_a_claim_for_one_replica_only() -> None:
    docs = render("batches.persistence.enabled=true", "batches.persistence.size=5Gi")
    claim = next(d for d in docs if d["kind"] == "PersistentVolumeClaim")
    assert claim["metadata"]["name"] == "rel-ascend-llm-gateway-state"
    assert claim["spec"]["resources"]["requests"]["storage"] == "5Gi"
    pod = kind(docs, "Deployment")["spec"]["template"]["spec"]
    state = next(v for v in pod["volumes"] if v["name"] == "state")
    assert state["persistentVolumeClaim"]["claimName"] == "rel-ascend-llm-gateway-state"
    mounts = {m["name"]: m["mountPath"] for m in container(docs)["volumeMounts"]}
    assert mounts["state"] == "/var/lib/gateway"
    config = kind(docs, "ConfigMap")["data"]
    assert config["GATEWAY_DATA_DIR"] == "/var/lib/gateway" and config["GATEWAY_BATCHES"] == "true"
    # a rollout never puts two pods on the file: Recreate, whatever values.strategy says
    assert kind(docs, "Deployment")["spec"]["strategy"] == {"type": "Recreate"}
    # by default an emptyDir, and no claim (a surge is harmless there)
    docs = render()
    assert not [d for d in docs if d["kind"] == "PersistentVolumeClaim"]
    pod = kind(docs, "Deployment")["spec"]["template"]["spec"]
    assert next(v for v in pod["volumes"] if v["name"] == "state")["emptyDir"] == {}
    assert kind(docs, "Deployment")["spec"]["strategy"]["type"] == "RollingUpdate"
    # a SQLite file is one gateway's: two replicas on it are refused at render
    r = subprocess.run(
        [str(HELM), "template", "rel", str(CHART), "--set", "batches.persistence.enabled=true",
         "--set", "replicaCount=2"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert r.returncode != 0 and "one replica only" in r.stderr


def test_task_adapters_from_a_claim_every_replica_mounts() -> None:
    docs = render(*ALL_ON)
    claims = {d["metadata"]["name"]: d for d in docs if d["kind"] == "PersistentVolumeClaim"}
    adapters = claims["rel-ascend-llm-gateway-adapters"]
    assert adapters["spec"]["accessModes"] == ["ReadWriteMany"]
    pod = kind(docs, "Deployment")["spec"]["template"]["spec"]
    volume = next(v for v in pod["volumes"] if v["name"] == "adapters")
    assert volume["persistentVolumeClaim"]["claimName"] == "rel-ascend-llm-gateway-adapters"
    gw = container(docs)
    mount = next(m for m in gw["volumeMounts"] if m["name"] == "adapters")
    assert mount["mountPath"] == "/adapters" and not mount.get("readOnly")  # admin loads write
    admin = next(e for e in gw["env"] if e["name"] == "GATEWAY_ADMIN_KEYS")
    assert admin["valueFrom"]["secretKeyRef"]["name"] == "gateway-admins"
    filler = next(c for c in pod["initContainers"] if c["name"] == "fetch-adapters")
    assert filler["image"] == "registry.example.com/fetch-adapters:1"
    assert {"name": "MODEL_DIR", "value": "/adapters"} in filler["env"]
    config = next(
        d["data"] for d in docs
        if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "rel-ascend-llm-gateway"
    )  # fmt: skip
    assert config["GATEWAY_LORA_DIR"] == "/adapters"
    assert (config["GATEWAY_MAX_LORAS"], config["GATEWAY_MAX_LORA_RANK"]) == ("4", "16")
    # Off by default: no LoRA settings, no volume (an engine without LoRA).
    docs = render()
    assert not any(k.startswith("GATEWAY_LORA") for k in kind(docs, "ConfigMap")["data"])
    pod = kind(docs, "Deployment")["spec"]["template"]["spec"]
    assert not [v for v in pod["volumes"] if v["name"] == "adapters"]
    # A ReadWriteOnce claim cannot serve two replicas: refused at render.
    r = subprocess.run(
        [str(HELM), "template", "rel", str(CHART), "--set", "adapters.enabled=true",
         "--set", "adapters.existingClaim.accessMode=ReadWriteOnce", "--set", "replicaCount=2"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert r.returncode != 0 and "ReadWriteMany" in r.stderr

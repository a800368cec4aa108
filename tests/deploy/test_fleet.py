"""The chart on real Atlas clusters (issue: the fleet on Kubernetes): each
test here failed on the chart before it. Rendered by the real helm binary;
custom kinds checked against their CRD's own schema."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.support.gateway import ROOT
from tests.support.helm import CHART, HELM, container, kind, render

DATA = Path(__file__).parent / "data"


def spec(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return kind(docs, "Deployment")["spec"]["template"]["spec"]  # type: ignore[no-any-return]


def refused(*sets: str) -> str:
    """helm template's error text for values that must not render."""
    args = [str(HELM), "template", "rel", str(CHART)]
    for s in sets:
        args += ["--set", s]
    r = subprocess.run(args, capture_output=True, text=True)
    assert r.returncode != 0, sets
    return r.stderr


def test_rollout_strategy_for_clusters_with_no_spare_npu() -> None:
    default = kind(render(), "Deployment")["spec"]
    assert default["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
    assert default["progressDeadlineSeconds"] >= 480  # above the startup budget
    full = kind(
        render(
            "strategy.rollingUpdate.maxSurge=0",
            "strategy.rollingUpdate.maxUnavailable=1",
            "progressDeadlineSeconds=900",
        ),
        "Deployment",
    )["spec"]
    assert full["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1},
    }
    assert full["progressDeadlineSeconds"] == 900


def test_no_service_links_reach_vllm() -> None:
    assert spec(render())["enableServiceLinks"] is False
    assert spec(render("fullnameOverride=vllm"))["enableServiceLinks"] is False


def test_escape_hatches_for_ascend_tuning() -> None:
    docs = render(
        "extraEnv[0].name=PYTORCH_NPU_ALLOC_CONF",
        "extraEnv[0].value=expandable_segments:True",
        "extraEnv[1].name=HCCL_CONNECT_TIMEOUT",
        "extraEnv[1].valueFrom.configMapKeyRef.name=hccl",
        "extraEnv[1].valueFrom.configMapKeyRef.key=timeout",
        "extraVolumes[0].name=ascend-log",
        "extraVolumes[0].hostPath.path=/var/log/npu",
        "extraVolumes[0].hostPath.type=Directory",
        "extraVolumeMounts[0].name=ascend-log",
        "extraVolumeMounts[0].mountPath=/var/log/npu",
        "initContainers[0].name=warm-cache",
        "initContainers[0].image=busybox:1.36",
        "runtimeClassName=ascend",
        "hostIPC=true",
        "podAnnotations.example\\.com/owner=llm",
        "topologySpreadConstraints[0].maxSkew=1",
        "topologySpreadConstraints[0].topologyKey=topology.kubernetes.io/zone",
        "topologySpreadConstraints[0].whenUnsatisfiable=ScheduleAnyway",
        "podSecurityContext.supplementalGroups[0]=1000",
    )
    pod = spec(docs)
    env = {e["name"]: e for e in container(docs)["env"]}
    assert env["PYTORCH_NPU_ALLOC_CONF"]["value"] == "expandable_segments:True"
    assert env["HCCL_CONNECT_TIMEOUT"]["valueFrom"]["configMapKeyRef"]["name"] == "hccl"
    assert {"name": "ascend-log", "mountPath": "/var/log/npu"} in container(docs)["volumeMounts"]
    assert any(v["name"] == "ascend-log" for v in pod["volumes"])
    assert [c["name"] for c in pod["initContainers"]] == ["warm-cache"]
    assert pod["runtimeClassName"] == "ascend" and pod["hostIPC"] is True
    assert pod["topologySpreadConstraints"][0]["maxSkew"] == 1
    assert pod["securityContext"]["supplementalGroups"] == [1000]
    meta = kind(docs, "Deployment")["spec"]["template"]["metadata"]
    assert meta["annotations"]["example.com/owner"] == "llm"


def test_replicas_spread_across_nodes_by_default() -> None:
    soft = spec(render())["affinity"]["podAntiAffinity"]
    term = soft["preferredDuringSchedulingIgnoredDuringExecution"][0]["podAffinityTerm"]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    assert term["labelSelector"]["matchLabels"]["app.kubernetes.io/instance"] == "rel"
    hard = spec(render("podAntiAffinity=hard"))["affinity"]["podAntiAffinity"]
    assert "requiredDuringSchedulingIgnoredDuringExecution" in hard
    assert "affinity" not in spec(render("podAntiAffinity=none"))


def test_driver_host_paths_must_exist_on_the_node() -> None:
    volumes = {v["name"]: v for v in spec(render())["volumes"]}
    assert volumes["ascend-driver"]["hostPath"]["type"] == "Directory"
    assert volumes["dcmi"]["hostPath"]["type"] == "Directory"
    assert volumes["npu-smi"]["hostPath"]["type"] == "File"
    assert volumes["ascend-install-info"]["hostPath"]["type"] == "File"


@pytest.mark.parametrize(
    "sets",
    [
        ["model.existingClaim.accessMode=ReadWriteOnce", "replicaCount=2"],
        ["model.existingClaim.accessMode=ReadWriteOnce", "autoscaling.enabled=true"],
        ["model.existingClaim.accessMode=ReadWriteOnce"],  # the default surge of 1
    ],
)
def test_a_read_write_once_claim_cannot_be_shared(sets: list[str]) -> None:
    error = refused(*sets)
    assert "ReadWriteOnce" in error and "ReadOnlyMany" in error


def test_a_read_write_once_claim_with_one_pod_and_no_surge_renders() -> None:
    docs = render(
        "model.existingClaim.accessMode=ReadWriteOnce",
        "strategy.rollingUpdate.maxSurge=0",
        "strategy.rollingUpdate.maxUnavailable=1",
    )
    assert kind(docs, "Deployment")["spec"]["replicas"] == 1


def test_a_new_claim_needs_a_filler() -> None:
    assert "initContainer" in refused("model.source=newClaim")
    docs = render(
        "model.source=newClaim",
        "model.initContainer.enabled=true",
        "model.initContainer.image=registry.example.com/fetch:1",
        "model.initContainer.command[0]=/bin/fetch",
        "replicaCount=3",
    )
    filler = spec(docs)["initContainers"][0]
    assert filler["image"] == "registry.example.com/fetch:1"
    mount = filler["volumeMounts"][0]
    assert mount["name"] == "weights" and not mount.get("readOnly")
    # The filler writes it, every replica reads it.
    assert kind(docs, "PersistentVolumeClaim")["spec"]["accessModes"] == ["ReadWriteMany"]
    gateway_mount = next(m for m in container(docs)["volumeMounts"] if m["name"] == "weights")
    assert gateway_mount["readOnly"] is True


def test_readiness_tolerates_a_slow_answer_and_startup_covers_a_cold_capture() -> None:
    c = container(render())
    ready = c["readinessProbe"]
    assert ready["failureThreshold"] >= 3 and ready["timeoutSeconds"] >= 5
    assert c["livenessProbe"]["timeoutSeconds"] >= 5
    startup = c["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 480


def test_gateway_knows_its_grace_and_watches_for_hangs() -> None:
    env = kind(render("drain.timeoutSeconds=60", "drain.preStopSleepSeconds=5"), "ConfigMap")
    data = env["data"]
    # What the process has after SIGTERM: the grace minus the preStop sleep.
    assert float(data["GATEWAY_TERMINATION_GRACE"]) >= float(data["GATEWAY_DRAIN_TIMEOUT"]) + 5
    assert float(data["GATEWAY_STALL_TIMEOUT"]) > 0


def test_metrics_can_be_scraped_from_other_namespaces() -> None:
    docs = render(
        "networkPolicy.enabled=true",
        "networkPolicy.metricsFrom[0].namespaceSelector.matchLabels.name=monitoring",
        "networkPolicy.metricsFrom[1].podSelector.matchLabels.app=epp",
    )
    ingress = kind(docs, "NetworkPolicy")["spec"]["ingress"]
    assert ingress[0]["from"] == [{"podSelector": {}}]
    assert ingress[1]["from"] == [
        {"namespaceSelector": {"matchLabels": {"name": "monitoring"}}},
        {"podSelector": {"matchLabels": {"app": "epp"}}},
    ]


def test_inference_pool_matches_the_crd_schema_and_selects_the_pods() -> None:
    docs = render("inferencePool.enabled=true", "inferencePool.endpointPicker.name=epp")
    pool = kind(docs, "InferencePool")
    schema = yaml.safe_load((DATA / "inferencepool-v1.6.0.schema.yaml").read_text())
    jsonschema.validate(pool, schema)
    labels = kind(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert pool["apiVersion"] == "inference.networking.k8s.io/v1"
    assert pool["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pool["spec"]["targetPorts"] == [{"number": 8000}]
    assert pool["spec"]["endpointPickerRef"]["port"] == {"number": 9002}
    # The schema is strict enough to catch a wrong shape (the pre-v1 field names).
    old = {**pool, "spec": {**pool["spec"], "targetPortNumber": 8000}}
    del old["spec"]["targetPorts"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(old, schema)
    assert "endpointPicker.name" in refused("inferencePool.enabled=true")


def test_keda_scaled_object_is_an_alternative_to_the_hpa() -> None:
    docs = render("keda.enabled=true", "keda.threshold=8")
    scaled = kind(docs, "ScaledObject")
    trigger = scaled["spec"]["triggers"][0]
    assert trigger["type"] == "prometheus" and trigger["metadata"]["threshold"] == "8"
    assert "gateway_requests_waiting" in trigger["metadata"]["query"]
    assert "choose one" in refused("keda.enabled=true", "autoscaling.enabled=true")


def test_the_chart_folder_copies_and_packages_as_is(tmp_path: Path) -> None:
    files = CHART / "files"
    assert not any(p.is_symlink() for p in CHART.rglob("*"))
    # The chart's copies are the shipped rules and dashboard, byte for byte.
    assert (files / "rules.yaml").read_bytes() == (
        ROOT / "deploy" / "prometheus" / "rules.yaml"
    ).read_bytes()
    assert (files / "ascend-llm-gateway.json").read_bytes() == (
        ROOT / "deploy" / "grafana" / "dashboards" / "ascend-llm-gateway.json"
    ).read_bytes()
    copy = tmp_path / "chart"
    shutil.copytree(CHART, copy)
    r = subprocess.run(
        [str(HELM), "package", str(copy), "-d", str(tmp_path)], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr
    assert list(tmp_path.glob("ascend-llm-gateway-*.tgz"))


def test_the_proxy_closes_idle_connections_before_the_gateway_does() -> None:
    """Envoy keeps idle upstream connections 1 h by default; the gateway closes
    them after GATEWAY_KEEPALIVE_TIMEOUT. The policy makes Envoy close first."""
    docs = render(
        "inferencePool.enabled=true",
        "inferencePool.endpointPicker.name=epp",
        "inferencePool.backendTrafficPolicy.enabled=true",
        "inferencePool.backendTrafficPolicy.httpRouteName=llm",
    )
    policy = kind(docs, "BackendTrafficPolicy")
    assert policy["apiVersion"] == "gateway.envoyproxy.io/v1alpha1"
    assert policy["spec"]["targetRefs"] == [
        {"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": "llm"}
    ]
    idle = policy["spec"]["timeout"]["http"]["connectionIdleTimeout"]
    env = kind(docs, "ConfigMap")["data"]
    assert idle.endswith("s") and int(idle[:-1]) < int(env["GATEWAY_KEEPALIVE_TIMEOUT"])
    assert "httpRouteName" in refused(
        "inferencePool.enabled=true",
        "inferencePool.endpointPicker.name=epp",
        "inferencePool.backendTrafficPolicy.enabled=true",
    )
    assert "below gateway.keepaliveTimeoutSeconds" in refused(
        "inferencePool.enabled=true",
        "inferencePool.endpointPicker.name=epp",
        "inferencePool.backendTrafficPolicy.enabled=true",
        "inferencePool.backendTrafficPolicy.httpRouteName=llm",
        "inferencePool.backendTrafficPolicy.connectionIdleTimeoutSeconds=120",
    )
    # Off by default: no Envoy Gateway CRD is assumed.
    assert not [d for d in render() if d["kind"] == "BackendTrafficPolicy"]


def test_the_grace_period_covers_the_drain_delay() -> None:
    docs = render("drain.timeoutSeconds=10", "drain.delaySeconds=40", "drain.preStopSleepSeconds=5")
    grace = kind(docs, "Deployment")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    env = kind(docs, "ConfigMap")["data"]
    assert env["GATEWAY_DRAIN_DELAY"] == "40"
    assert grace == 5 + 40 + 15
    assert int(env["GATEWAY_TERMINATION_GRACE"]) == grace - 5


def test_a_fleet_shares_batches_through_postgresql_or_offers_none() -> None:
    """More than one replica: batches live in PostgreSQL (the Secret's URL),
    or the Batch API is off with a note saying why; a SQLite file is one pod's."""
    config = kind(render("replicaCount=3"), "ConfigMap")["data"]
    assert config["GATEWAY_BATCHES"] == "false" and "GATEWAY_BATCH_SHARE" not in config
    notes = subprocess.run(
        [str(HELM), "install", "rel", str(CHART), "--dry-run", "--set", "replicaCount=3"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert "The Batch API is OFF" in notes and "batches.postgres.existingSecret" in notes
    docs = render("replicaCount=3", "batches.postgres.existingSecret=batch-db")
    assert kind(docs, "ConfigMap")["data"]["GATEWAY_BATCHES"] == "true"
    env = {e["name"]: e for e in container(docs)["env"]}
    ref = env["GATEWAY_BATCH_STORE"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": "batch-db", "key": "url"}
    one = kind(render(), "ConfigMap")["data"]  # one replica: its own SQLite file
    assert one["GATEWAY_BATCHES"] == "true"
    assert "GATEWAY_BATCH_STORE" not in {e["name"] for e in container(render())["env"]}


def test_keda_scales_a_fleet_on_its_shared_batch_backlog() -> None:
    docs = render(
        "keda.enabled=true", "keda.batchBacklogTokens=200000",
        "batches.postgres.existingSecret=batch-db",
    )  # fmt: skip
    queue, backlog = kind(docs, "ScaledObject")["spec"]["triggers"]
    assert "gateway_requests_waiting" in queue["metadata"]["query"]
    # every replica reports the one store's backlog: max over the pods, not sum
    assert backlog["metadata"]["query"].strip().startswith("max(gateway_batch_backlog_tokens{")
    assert backlog["metadata"]["threshold"] == "200000"
    assert len(kind(render("keda.enabled=true"), "ScaledObject")["spec"]["triggers"]) == 1
    assert "batches.postgres" in refused("keda.enabled=true", "keda.batchBacklogTokens=1000")

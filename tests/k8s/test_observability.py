"""k8s/observability/: the Prometheus scrape config, the alert rules and the
Grafana dashboard use only metrics (and label values) the server exports,
as a running server's /metrics shows them, and select the pods and ports
the manifests declare. `promtool` checks and unit-tests the rules whenever
it is on PATH (Debian package `prometheus`), under CI or not; without it
those two tests skip and say why."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import yaml
from prometheus_client import CollectorRegistry, Gauge
from prometheus_client.metrics import MetricWrapperBase
from py_grpc_prometheus import server_metrics

from aster.server.observability import aster_metrics
from aster.server.observability import metrics as server_observability
from aster.server.rpc.catalog import service_names
from aster.server.runs.models import RunStatus
from tests.k8s.objects import K8S_DIR, built, container, find
from tests.processes import Ports, start_server

OBSERVABILITY = K8S_DIR / "observability"
SCRAPE_CONFIG = OBSERVABILITY / "prometheus.yml"
RULES = OBSERVABILITY / "alerts.rules.yaml"
RULE_TESTS = OBSERVABILITY / "alerts.test.yaml"
DASHBOARD = OBSERVABILITY / "grafana-dashboard.json"
JOB = "aster-server"
# Series Prometheus makes itself.
SYNTHETIC = {"up"}
SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
}
PROMQL_WORDS = {
    "and",
    "or",
    "unless",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "offset",
    "inf",
    "nan",
}


def _series_names(collectors: list[MetricWrapperBase]) -> set[str]:
    names: set[str] = set()
    for collector in collectors:
        for family in collector.describe():
            names.update(family.name + suffix for suffix in SUFFIXES[family.type])
    return names


def database_wide_gauges() -> set[str]:
    """The gauges every replica reads from the database (the queues): each
    pod reports the same number, so only max() of them makes sense."""
    return {
        gauge._name
        for gauge in vars(aster_metrics).values()
        if isinstance(gauge, Gauge) and gauge._multiprocess_mode == "livemostrecent"
    }


def aster_series() -> set[str]:
    """The aster_* series of server/observability/aster_metrics.py."""
    defined = [v for v in vars(aster_metrics).values() if isinstance(v, MetricWrapperBase)]
    return _series_names(defined)


def server_series() -> set[str]:
    """Every series the server exports: py-grpc-prometheus's grpc_server_*
    (as metrics.py registers them) and Aster's own."""
    registry = CollectorRegistry()
    grpc_metrics = list(server_metrics.init_metrics(registry).values())
    grpc_metrics.append(server_metrics.get_grpc_server_handled_counter(False, registry))
    return _series_names(grpc_metrics) | aster_series() | SYNTHETIC


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    names = set()
    for match in re.finditer(r"(?<![\w.$])[A-Za-z_:][\w:]*", text):
        if text[match.end() :].lstrip().startswith("(") or match.group() in PROMQL_WORDS:
            continue
        names.add(match.group())
    return names


def label_matchers(expr: str) -> list[tuple[str, str, str]]:
    """(label, operator, value) of every matcher in an expression."""
    return re.findall(r'(\w+)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"', expr)


def rule_exprs() -> list[tuple[str, str]]:
    rules = yaml.safe_load(RULES.read_text())
    return [(r["alert"], r["expr"]) for group in rules["groups"] for r in group["rules"]]


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def dashboard_exprs() -> list[tuple[str, str]]:
    return [
        (panel["title"], target["expr"])
        for panel in dashboard()["panels"]
        for target in panel.get("targets", [])
    ]


def all_exprs() -> list[tuple[str, str]]:
    return rule_exprs() + dashboard_exprs()


QUEUE_GAUGES = {
    "aster_run_queue_depth",
    "aster_run_queue_oldest_age_seconds",
    "aster_runs_lease_expired",
    "aster_workflow_execution_queue_depth",
    "aster_workflow_executions_lease_expired",
}


def test_server_metric_names_are_known() -> None:
    """The names the other tests compare with are the ones the server uses."""
    series = server_series()
    assert "grpc_server_handled_total" in series
    assert "grpc_server_handling_seconds_bucket" in series
    assert {"aster_active_streams", "aster_runs_total"} <= series
    assert database_wide_gauges() == QUEUE_GAUGES
    assert "no queue-depth metric" not in RULES.read_text()


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Iterator[set[str]]:
    """The series a running server (`aster serve`, SQLite) exports on its
    metrics port, by the families its /metrics page declares (a labelled
    family with no sample yet is declared all the same)."""
    data_dir: Path = tmp_path_factory.mktemp("metrics-server")
    ports = Ports()
    server = start_server(ports, data_dir)
    try:
        text = httpx.get(f"http://127.0.0.1:{ports.metrics}/metrics", timeout=10).text
    finally:
        assert server.stop() == 0, server.log_tail()
    names = set(SYNTHETIC)
    for family, kind in re.findall(r"^# TYPE (\S+) (\S+)$", text, re.MULTILINE):
        if kind == "counter":
            family = family.removesuffix("_total")
        names.update(family + suffix for suffix in SUFFIXES.get(kind, ("",)))
    yield names


@pytest.mark.parametrize("where, expr", all_exprs())
def test_every_metric_used_exists(where: str, expr: str, exported: set[str]) -> None:
    """What an alert or a panel reads is defined by the server and is on a
    running server's /metrics page."""
    names = metric_names(expr)
    assert names, f"{where}: no metric found in {expr!r}"
    unknown = names - server_series()
    assert not unknown, f"{where}: unknown metrics {sorted(unknown)}"
    missing = names - exported
    assert not missing, f"{where}: not exported by a running server: {sorted(missing)}"


def test_the_running_server_exports_the_queue_gauges(exported: set[str]) -> None:
    assert exported >= QUEUE_GAUGES
    assert exported >= server_series()


@pytest.mark.parametrize("where, expr", all_exprs())
def test_database_wide_gauges_are_never_summed(where: str, expr: str) -> None:
    """Every pod reports the same queue numbers: a rule or panel takes their
    max() (per namespace at most), never their sum()."""
    for name in metric_names(expr) & database_wide_gauges():
        pattern = rf"\bmax(\s+by\s*\(\s*namespace\s*\))?\s*\(\s*{name}\b"
        assert re.search(pattern, expr), f"{where}: {name} not under max(): {expr!r}"
        assert "sum" not in expr, f"{where}: {expr!r}"


@pytest.mark.parametrize("where, expr", all_exprs())
def test_label_values_are_ones_the_server_sets(where: str, expr: str) -> None:
    known = {
        "grpc_code": {code.name for code in grpc.StatusCode},
        "status": {status.value for status in RunStatus},
        "grpc_type": {server_observability.UNARY, server_observability.SERVER_STREAM},
        "job": {JOB},
        "grpc_service": {*service_names(), "grpc.health.v1.Health"},
    }
    for label, _operator, value in label_matchers(expr):
        if label in known and not value.startswith("$"):
            values = set(value.split("|"))
            assert values <= known[label], f"{where}: {label}={value!r}"


def test_metric_name_extraction() -> None:
    expr = (
        "histogram_quantile(0.99, sum by (grpc_service, le) ("
        'rate(grpc_server_handling_seconds_bucket{job="x", grpc_type="UNARY"}[5m]))) > 1'
        " and on () (sum(increase(aster_runs_total[30m])) or vector(0))"
    )
    assert metric_names(expr) == {"grpc_server_handling_seconds_bucket", "aster_runs_total"}
    assert ("grpc_type", "=", "UNARY") in label_matchers(expr)


def test_rules_are_well_formed() -> None:
    rules = yaml.safe_load(RULES.read_text())
    names = []
    for group in rules["groups"]:
        assert group["name"].startswith("aster.")
        for rule in group["rules"]:
            names.append(rule["alert"])
            assert set(rule) == {"alert", "expr", "for", "labels", "annotations"}
            assert rule["labels"]["severity"] in {"warning", "critical"}
            assert {"summary", "description"} <= set(rule["annotations"])
            assert f'job="{JOB}"' in rule["expr"]
    assert len(names) == len(set(names))
    exprs = dict(rule_exprs())
    # What the rules are for: error rate, p99 latency, and runs.
    assert 'grpc_code!="OK"' in exprs["AsterGrpcErrorRateHigh"]
    assert "grpc_server_handling_seconds_bucket" in exprs["AsterGrpcLatencyP99High"]
    assert "0.99" in exprs["AsterGrpcLatencyP99High"]
    assert "aster_active_streams" in exprs["AsterRunsStuck"]
    assert "aster_runs_total" in exprs["AsterRunsStuck"]
    # The queues: depth, a queue nobody drains, and stuck runs whether or
    # not a stream watches them.
    assert "aster_run_queue_depth" in exprs["AsterRunQueueDepthHigh"]
    assert "aster_run_queue_oldest_age_seconds" in exprs["AsterRunQueueStalled"]
    assert "aster_runs_lease_expired" in exprs["AsterRunLeasesExpired"]
    assert "aster_active_streams" not in exprs["AsterRunLeasesExpired"]
    assert "aster_workflow_execution_queue_depth" in exprs["AsterWorkflowExecutionQueueDepthHigh"]
    assert (
        "aster_workflow_executions_lease_expired" in (exprs["AsterWorkflowExecutionLeasesExpired"])
    )
    # Each of those alerts has a promtool unit test.
    tested = RULE_TESTS.read_text()
    for alert in (
        "AsterRunQueueDepthHigh",
        "AsterRunQueueStalled",
        "AsterRunLeasesExpired",
        "AsterWorkflowExecutionQueueDepthHigh",
        "AsterWorkflowExecutionLeasesExpired",
    ):
        assert f"alertname: {alert}" in tested, alert


def test_scrape_config_finds_the_server_pods_metrics_port() -> None:
    config = yaml.safe_load(SCRAPE_CONFIG.read_text())
    assert config["rule_files"] == [RULES.name]
    [job] = config["scrape_configs"]
    assert job["job_name"] == JOB
    relabel = {tuple(r.get("source_labels", [])): r for r in job["relabel_configs"]}
    objects = built("prod")
    deployment = find(objects, "Deployment", "aster-server")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    keep = relabel[
        (
            "__meta_kubernetes_pod_label_app_kubernetes_io_name",
            "__meta_kubernetes_pod_label_app_kubernetes_io_component",
        )
    ]
    assert keep["action"] == "keep"
    name, component = keep["regex"].split(";")
    assert labels["app.kubernetes.io/name"] == name
    assert labels["app.kubernetes.io/component"] == component
    port_rule = relabel[("__meta_kubernetes_pod_container_port_name",)]
    server = container(objects, "Deployment", "aster-server")
    metrics_port = next(p for p in server["ports"] if p["name"] == port_rule["regex"])
    assert str(metrics_port["containerPort"]) == annotations["prometheus.io/port"]
    scrape = relabel[("__meta_kubernetes_pod_annotation_prometheus_io_scrape",)]
    assert re.fullmatch(scrape["regex"], annotations["prometheus.io/scrape"])
    namespaces = job["kubernetes_sd_configs"][0]["namespaces"]["names"]
    for overlay in ("dev", "prod"):
        [namespace] = [o for o in built(overlay) if o["kind"] == "Namespace"]
        assert namespace["metadata"]["name"] in namespaces


def test_dashboard_is_grafana_json_over_the_server_metrics() -> None:
    board = dashboard()
    assert board["uid"] and board["title"]
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))
    variables = {v["name"] for v in board["templating"]["list"]}
    assert {"datasource", "namespace"} <= variables
    for panel in board["panels"]:
        assert {"x", "y", "w", "h"} <= set(panel["gridPos"])
        if panel["type"] != "row":
            assert panel["targets"], panel["title"]
            assert panel["datasource"]["uid"] == "${datasource}"
    # Every Aster metric has a panel.
    used = set().union(*(metric_names(e) for _, e in dashboard_exprs()))
    for name in aster_series():
        if name.endswith(("_created", "_sum", "_count")):
            continue
        family = re.sub(r"_(bucket|total)$", "", name)
        assert any(u.startswith(family) for u in used), name


def _promtool() -> str:
    """promtool if it is on PATH (CI or not); else the test skips, saying why."""
    found = shutil.which("promtool")
    if found is None:
        pytest.skip("promtool is not on PATH: install it (Debian package `prometheus`)")
    return found


def test_promtool_checks_the_rules() -> None:
    result = subprocess.run(
        [_promtool(), "check", "rules", str(RULES)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests_the_rules() -> None:
    result = subprocess.run(
        [_promtool(), "test", "rules", RULE_TESTS.name],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=OBSERVABILITY,
    )
    assert result.returncode == 0, result.stdout + result.stderr

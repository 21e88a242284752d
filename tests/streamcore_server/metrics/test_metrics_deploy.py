"""deploy/: the Grafana dashboard and the Prometheus rules read series the app exports; promtool
checks the rules, their unit tests, the scrape config and a real exposition when installed."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from app_support import Api

from streamcore import Histogram
from streamcore_server.metrics import exposition
from streamcore_server.metrics.registry import Registry, Snapshot
from streamcore_server.replicas import FALLBACK_REASONS

DEPLOY = Path(__file__).resolve().parents[3] / "deploy"
DASHBOARD = DEPLOY / "grafana" / "streamcore.json"
RULES = DEPLOY / "prometheus" / "slo_rules.yml"
RULES_TEST = DEPLOY / "prometheus" / "slo_rules_test.yml"
CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
REPLICA_RULES = DEPLOY / "prometheus" / "replica_rules.yml"
REPLICA_RULES_TEST = DEPLOY / "prometheus" / "replica_rules_test.yml"
REALTIME_RULES = DEPLOY / "prometheus" / "realtime_rules.yml"
REALTIME_RULES_TEST = DEPLOY / "prometheus" / "realtime_rules_test.yml"
REPLICA = {"name": "db2:5432/app", "up": True, "lag_s": 0.5, "lag_bytes": 1024}
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool is not installed (apt-get install prometheus)"
)
NAME = re.compile(r"\b(streamcore(?::[a-z0-9_]+)+|streamcore_[a-z0-9_]+)\b")
SUFFIXES = ("_bucket", "_count", "_sum", "_total")


def full_snapshot() -> Snapshot:
    """A snapshot with every optional family present (cache, pool, realtime, orgs)."""
    registry = Registry()
    registry.record(None, "GET", 200, 0.01, time.perf_counter())
    snap = registry.snapshot()
    snap.histograms = {"realtime_delivery": Histogram(), "realtime_window": Histogram()}
    keys = [k for _, k, _ in exposition.REALTIME_COUNTERS + exposition.IDEMPOTENCY_COUNTERS]
    snap.counters = {k: 1 for k in keys}
    for level in exposition.CACHE_LEVELS:
        snap.counters[f"cache_{level}_hits"] = 1
        snap.counters[f"cache_{level}_misses"] = 1
    snap.gauges = {"realtime_connections": 1, "db_pool_size": 10, "db_pool_in_use": 1}
    snap.gauges |= {"db_replica_pool_size": 10, "db_replica_pool_in_use": 1}
    snap.gauges |= {"realtime_broker_outbox": 0, "realtime_broker_orgs": 1}
    snap.counters |= {"db_reads_replica": 1, "db_reads_primary": 1}
    snap.counters |= {f"db_replica_fallback_{r}": 1 for r in FALLBACK_REASONS}
    snap.org_connections = {7: 1}
    return snap


def exported_series() -> set[str]:
    text = exposition.render(
        full_snapshot(), org_cap=1000, replicas=[REPLICA], replica_max_lag_s=5.0
    ).decode()
    return {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line[:1] != "#"}


def recorded() -> set[str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {r["record"] for g in groups for r in g["rules"] if "record" in r}


def referenced(expr: str) -> set[str]:
    return set(NAME.findall(expr))


def test_dashboard_covers_red_realtime_connections_idempotency_and_slos() -> None:
    dash = json.loads(DASHBOARD.read_text())
    panels = [p for p in dash["panels"] if p["type"] != "row"]
    rows = {p["title"] for p in dash["panels"] if p["type"] == "row"}
    assert {"RED per route", "Realtime delivery", "Connections", "Idempotency", "Database"} <= rows
    assert any(r.startswith("SLO") for r in rows)
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    known = exported_series() | recorded()
    for p in panels:
        assert p["targets"], p["title"]
        for target in p["targets"]:
            names = referenced(target["expr"])
            assert names, (p["title"], target["expr"])
            assert names <= known, (p["title"], names - known)
    slo_titles = " ".join(p["title"] for p in panels if p["type"] == "stat")
    for target in ("300 ms", "800 ms", "1 s", "0.1 %", "99.95 %", "85 %"):
        assert target in slo_titles


def test_rules_read_exported_series_and_alert_on_every_slo() -> None:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    known = exported_series() | recorded()
    alerts = set()
    for group in groups:
        for rule in group["rules"]:
            assert referenced(rule["expr"]) <= known, rule
            if "alert" in rule:
                alerts.add(rule["labels"]["slo"])
                assert rule["labels"]["severity"] in ("page", "ticket")
    assert alerts == {
        "availability",
        "errorRate",
        "apiLatencyP95",
        "apiLatencyP99",
        "realtimeDeliveryP95",
    }
    # The SLO thresholds are bucket edges of the export, so the rules count them exactly.
    text = RULES.read_text()
    for edge in ('le="0.3"', 'le="0.8"', 'le="1.0"'):
        assert edge in text


def promtool(*args: str, cwd: Path | None = None, stdin: bytes | None = None) -> str:
    assert PROMTOOL is not None
    done = subprocess.run(
        [PROMTOOL, *args], cwd=cwd, input=stdin, capture_output=True, timeout=60, check=False
    )
    out = (done.stdout + done.stderr).decode()
    assert done.returncode == 0, out
    return out


@needs_promtool
def test_promtool_checks_rules_and_their_unit_tests() -> None:
    promtool("check", "rules", str(RULES))
    promtool("test", "rules", RULES_TEST.name, cwd=RULES_TEST.parent)


@needs_promtool
def test_promtool_checks_the_scrape_config(tmp_path: Path) -> None:
    for path in (CONFIG, RULES, REPLICA_RULES, REALTIME_RULES):
        shutil.copy(path, tmp_path / path.name)
    (tmp_path / "streamcore_metrics_token").write_text("token\n")
    promtool("check", "config", str(tmp_path / CONFIG.name))


@needs_promtool
def test_promtool_lints_a_real_exposition(sqlite_api: Api) -> None:
    sqlite_api.client.get("/healthz")
    sqlite_api.client.get("/nowhere")
    text = sqlite_api.client.get("/v1/system/metrics/prometheus").content
    promtool("check", "metrics", stdin=text)
    full = exposition.render(full_snapshot(), org_cap=10, replicas=[REPLICA], replica_max_lag_s=5)
    promtool("check", "metrics", stdin=full)


def test_replica_alerts_read_exported_series() -> None:
    groups = yaml.safe_load(REPLICA_RULES.read_text())["groups"]
    alerts = {r["alert"]: r for g in groups for r in g["rules"] if "alert" in r}
    assert set(alerts) == {"StreamcoreReplicaLagHigh", "StreamcoreReplicaDown"}
    for rule in alerts.values():
        assert referenced(rule["expr"]) <= exported_series(), rule
        assert rule["labels"]["severity"] == "ticket"  # reads still succeed: nobody is paged


def test_dashboard_shows_replica_lag_and_fallbacks() -> None:
    dash = json.loads(DASHBOARD.read_text())
    shown = set().union(
        *(referenced(t["expr"]) for p in dash["panels"] for t in p.get("targets", []))
    )
    for series in (
        "streamcore_db_replica_lag_seconds",
        "streamcore_db_replica_lag_bytes",
        "streamcore_db_replica_up",
        "streamcore_db_replica_fallbacks_total",
    ):
        assert series in shown, series


@needs_promtool
def test_promtool_checks_the_replica_alerts_and_their_unit_tests() -> None:
    promtool("check", "rules", str(REPLICA_RULES))
    promtool("test", "rules", REPLICA_RULES_TEST.name, cwd=REPLICA_RULES_TEST.parent)


def test_realtime_alerts_read_exported_series() -> None:
    groups = yaml.safe_load(REALTIME_RULES.read_text())["groups"]
    alerts = {r["alert"]: r for g in groups for r in g["rules"] if "alert" in r}
    assert set(alerts) == {"StreamcoreRealtimeEventsLost", "StreamcoreRealtimeOutboxBacklog"}
    for rule in alerts.values():
        assert referenced(rule["expr"]) <= exported_series(), rule


@needs_promtool
def test_promtool_checks_the_realtime_alerts_and_their_unit_tests() -> None:
    promtool("check", "rules", str(REALTIME_RULES))
    promtool("test", "rules", REALTIME_RULES_TEST.name, cwd=REALTIME_RULES_TEST.parent)

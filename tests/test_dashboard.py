"""The Grafana dashboard (deploy/grafana/llmroute.json) reads only metrics the services export."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client import REGISTRY

import gateway.metrics
import router_svc.metering
import router_svc.shared
import service_kit.metrics

DASHBOARD = Path(__file__).resolve().parent.parent / "deploy" / "grafana" / "llmroute.json"
SUFFIXES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_count", "_sum"),
    "gauge": ("",),
}


def exported() -> set[str]:
    """The sample names the process's registry exports, with the suffixes Prometheus sees."""
    # Their metrics registered: the router's, every service's RPCs, the gateway's HTTP requests.
    assert router_svc.metering and router_svc.shared and service_kit.metrics and gateway.metrics
    return {
        family.name + suffix for family in REGISTRY.collect() for suffix in SUFFIXES.get(family.type, ("",))
    }


def test_every_metric_the_dashboard_reads_is_exported() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    expressions = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    used = {name for expr in expressions for name in re.findall(r"\bllmroute_[a-z_]+", expr)}
    assert used, "the dashboard reads no llmroute metric"
    missing = used - exported()
    assert not missing, f"the dashboard reads metrics no service exports: {sorted(missing)}"


def test_every_exported_llmroute_metric_has_a_panel() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    text = json.dumps(dashboard["panels"])
    families = {family.name for family in REGISTRY.collect() if family.name.startswith("llmroute_")}
    assert families, "no llmroute metric is registered"
    unread = {name for name in families if name not in text}
    assert not unread, f"metrics with no panel: {sorted(unread)}"


def test_panels_have_unique_ids_and_fit_the_grid() -> None:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24 and grid["h"] > 0
        assert panel["datasource"]["uid"] == "${datasource}"

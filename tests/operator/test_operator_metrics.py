"""The operator's /metrics on a real API server, and the chart's Grafana dashboard against what the
operator and a real tpserve server expose."""

from __future__ import annotations

import json
import re
from pathlib import Path

import openai
from prometheus_client.parser import text_string_to_metric_families

from tests.server.server_process import healthy_server, poll_until
from tpserve.testing.metrics_text import scrape_text, value

from .cluster import TIMEOUT, OperatorCluster, bring_up, group_pods, small, uids, wait_replaced

DASHBOARD = Path(__file__).resolve().parents[2] / "charts" / "tpserve" / "dashboards" / "tpserve.json"
SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count"),
    "summary": ("_sum", "_count"),
}


def exposed_names(text: str) -> set[str]:
    """Every series name a page offers, also of families that have no sample yet."""
    names = set()
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        names.update(family.name + suffix for suffix in SUFFIXES.get(family.type, ()))
        names.update(sample.name for sample in family.samples)
    return names


def dashboard_metric_names() -> set[str]:
    queries = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            for key, item in node.items():
                if key in ("expr", "query", "definition") and isinstance(item, str):
                    queries.append(item)
                walk(item)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(json.loads(DASHBOARD.read_text()))
    assert len(queries) > 20
    return {name for q in queries for name in re.findall(r"\b((?:tpserve|process)_[a-z0-9_]+)\b", q)}


def test_operator_metrics_count_reconciles_restarts_and_phases_and_the_dashboard_reads_them(
    cluster: OperatorCluster, tiny_checkpoint, tmp_path: Path
) -> None:
    with cluster.operator() as operator:
        cluster.create(small())
        cluster.create(small("broken", engine={"extraArgs": ["--tp", "2"]}))  # InvalidSpec: Failed
        bring_up(cluster, "llama")
        members = group_pods(cluster, "llama", 0)
        before = uids(cluster, members)
        cluster.kubelet.restarts["llama-worker-0-1"] = 1
        poll_until(lambda: cluster.status("llama")["groups"][0]["restarts"] == 1, TIMEOUT, what="restart counted")
        cluster.kubelet.restarts.clear()
        wait_replaced(cluster, members, before, "group replaced")
        poll_until(lambda: cluster.status("llama")["phase"] == "Ready", TIMEOUT, what="ready again")

        def settled() -> str | None:
            page = scrape_text(operator.metrics_url)
            ready = value(page, "tpserve_operator_services", phase="Ready") == 1
            return page if ready and value(page, "tpserve_operator_services", phase="Failed") == 1 else None

        page = poll_until(settled, TIMEOUT, what="services by phase")
        assert value(page, "tpserve_operator_group_restarts_total", namespace=cluster.namespace, service="llama") == 1
        assert value(page, "tpserve_operator_reconciliations_total", result="ok") >= 3
        assert value(page, "tpserve_operator_reconcile_duration_seconds_count") >= 3
        assert value(page, "tpserve_operator_services", phase="Starting") == 0
        operator_page = page

    server_args = ["--model", str(tiny_checkpoint("llama")), "--tp", "2", "--device", "cpu"]
    with healthy_server([*server_args, "--served-model-name", "tiny"], tmp_path / "server.log") as server:
        openai.OpenAI(base_url=f"{server.url}/v1", api_key="-", max_retries=0).completions.create(
            model="tiny", prompt="dashboard", max_tokens=2
        )
        server_page = scrape_text(server.url)
    exposed = exposed_names(operator_page) | exposed_names(server_page)
    missing = sorted(dashboard_metric_names() - exposed)
    assert missing == [], f"the dashboard queries metrics nobody exposes: {missing}"

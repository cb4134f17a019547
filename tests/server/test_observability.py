"""What Prometheus, a gateway and a log pipeline read off a two-node group (tp=2, one rank per node):
metrics that promtool accepts, per-rank gauges on both nodes, request histograms, status counts,
JSON log lines with node and rank, and the X-Request-Id carried into logs and responses."""

from __future__ import annotations

import json
import logging
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tpserve.core.logs import configure_logging, request_id_var
from tpserve.engine.launcher import free_port
from tpserve.testing.metrics_text import samples, scrape_text, value

from .server_process import ServerProcess, healthy_server, poll_until

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def promtool() -> str:
    out = subprocess.run(["bash", str(REPO / "tools/install_promtool.sh")], check=True, capture_output=True, text=True)
    return out.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def group(tiny_checkpoint, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    logs = tmp_path_factory.mktemp("observability")
    common = ["--model", str(tiny_checkpoint("llama")), "--tp", "2", "--nnodes", "2", "--device", "cpu"]
    common += ["--dist-init-addr", f"127.0.0.1:{free_port()}", "--served-model-name", "tiny", "--log-format", "json"]
    node0 = ServerProcess([*common, "--node-rank", "0"], logs / "node0.log")
    node1 = ServerProcess([*common, "--node-rank", "1"], logs / "node1.log")
    try:
        node0.wait_healthy(120)
        node1.wait_healthy(60)
        yield node0, node1
    finally:
        node0.stop()
        node1.stop()


def json_lines(node: ServerProcess) -> list[dict]:
    """The node's log, which must be JSON throughout (a few library warnings aside)."""
    records = []
    for line in node.log_tail(10**7).splitlines():
        if line.startswith("{"):
            records.append(json.loads(line))
    return records


def test_metrics_pages_pass_promtool(group: tuple[ServerProcess, ServerProcess], promtool: str) -> None:
    node0, _ = group
    openai.OpenAI(base_url=f"{node0.url}/v1", api_key="-", max_retries=0).completions.create(
        model="tiny", prompt="lint me", max_tokens=3
    )
    for node in group:
        text = scrape_text(node.url)
        check = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True)
        assert check.returncode == 0, f"{node.url}: {check.stdout}{check.stderr}"


def test_each_node_reports_its_own_ranks_and_the_leader_the_group(group: tuple[ServerProcess, ServerProcess]) -> None:
    node0, node1 = group
    for node, rank in ((node0, "0"), (node1, "1")):
        text = scrape_text(node.url)
        ranks = {s.labels["rank"] for s in samples(text) if s.name == "tpserve_rank_ready"}
        assert ranks == {rank}, f"node of rank {rank} reports ranks {ranks}"
        assert value(text, "tpserve_rank_ready", rank=rank, node=rank, model_name="tiny") == 1
        assert value(text, "tpserve_rank_phase", rank=rank, phase="ready") == 1
        assert value(text, "tpserve_rank_phase", rank=rank, phase="loading_weights") == 0
        assert 0 <= value(text, "tpserve_rank_heartbeat_age_seconds", rank=rank) < 3
    leader = scrape_text(node0.url)
    assert value(leader, "tpserve_ranks_ready", model_name="tiny") == 2
    assert value(leader, "tpserve_ranks_expected", model_name="tiny") == 2
    assert "tpserve_ranks_ready" not in scrape_text(node1.url), "only node 0 sees the whole group"


def test_request_histograms_and_status_counts(group: tuple[ServerProcess, ServerProcess]) -> None:
    node0, _ = group
    before = scrape_text(node0.url)
    client = openai.OpenAI(base_url=f"{node0.url}/v1", api_key="-", max_retries=0)
    client.completions.create(model="tiny", prompt="count me", max_tokens=5, extra_body={"ignore_eos": True})
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="no-such-model", prompt="x", max_tokens=1)
    after = scrape_text(node0.url)

    def grew(name: str, **labels: str) -> float:
        try:
            earlier = value(before, name, **labels)
        except KeyError:  # a label set appears with its first count
            earlier = 0.0
        return value(after, name, **labels) - earlier

    for histogram in (
        "tpserve_e2e_request_latency_seconds",
        "tpserve_request_queue_time_seconds",
        "tpserve_request_prefill_time_seconds",
        "tpserve_request_decode_time_seconds",
        "tpserve_time_to_first_token_seconds",
    ):
        assert grew(f"{histogram}_count", model_name="tiny") == 1, histogram
    assert grew("tpserve_request_generation_tokens_sum") == 5
    assert grew("tpserve_request_prompt_tokens_count") == 1
    assert grew("tpserve_requests_total", finish_reason="length") == 1
    assert grew("tpserve_http_requests_total", endpoint="/v1/completions", status="200") == 1
    assert grew("tpserve_http_requests_total", endpoint="/v1/completions", status="404") == 1
    assert 0 <= value(after, "tpserve_prefix_cache_hit_rate") <= 1
    capacity = value(after, "tpserve_kv_cache_pages_capacity")
    assert 0 < value(after, "tpserve_kv_cache_pages_free") <= capacity


def test_vllm_names_mirror_the_load_gauges_for_gateways(tiny_checkpoint, tmp_path: Path, promtool: str) -> None:
    args = ["--model", str(tiny_checkpoint("llama")), "--device", "cpu", "--served-model-name", "tiny"]
    with healthy_server([*args, "--vllm-metric-names"], tmp_path / "server.log") as server:
        openai.OpenAI(base_url=f"{server.url}/v1", api_key="-", max_retries=0).completions.create(
            model="tiny", prompt="alias", max_tokens=2
        )
        text = scrape_text(server.url)
    for ours, theirs in (
        ("tpserve_num_requests_waiting", "vllm:num_requests_waiting"),
        ("tpserve_num_requests_running", "vllm:num_requests_running"),
        ("tpserve_kv_cache_usage_perc", "vllm:kv_cache_usage_perc"),
        ("tpserve_kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"),
    ):
        assert value(text, theirs, model_name="tiny") == value(text, ours, model_name="tiny"), theirs
    # vLLM's names break Prometheus' naming rule (':' is for recording rules): that is all promtool finds.
    check = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True)
    complaints = [line for line in (check.stdout + check.stderr).splitlines() if line.strip()]
    assert complaints and all(c.startswith("vllm:") and "':'" in c for c in complaints), complaints


def test_request_id_reaches_the_response_and_the_log_line(group: tuple[ServerProcess, ServerProcess]) -> None:
    node0, node1 = group
    response = httpx.post(
        f"{node0.url}/v1/chat/completions",
        json={"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "ignore_eos": True},
        headers={"X-Request-Id": "trace-4711"},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    assert response.headers["x-request-id"] == "trace-4711"
    assert response.json()["id"] == "chatcmpl-trace-4711"
    generated = httpx.get(f"{node0.url}/v1/models", timeout=10).headers["x-request-id"]
    assert len(generated) >= 16, "a request without the header gets an id of its own"

    def request_line() -> dict | None:
        return next((r for r in json_lines(node0) if r.get("request_id") == "trace-4711"), None)

    line = poll_until(request_line, 10, what="the request's log line")
    assert line["logger"] == "tpserve.requests" and line["level"] == "INFO"
    assert (line["node"], line["rank"]) == (0, "-")
    assert line["status"] == 200 and line["output_tokens"] == 4 and line["finish_reason"] == "length"
    assert line["prompt_tokens"] > 0 and 0 < line["ttft_s"] <= line["total_s"]
    assert "request_tag" not in line and "color_message" not in line, "no helper fields in the JSON"

    # Every line of both nodes is JSON with its node and rank: the ranks' own lines as well.
    for node, number in ((node0, 0), (node1, 1)):
        text_lines = [x for x in node.log_tail(10**7).splitlines() if x.strip() and not x.startswith("{")]
        records = json_lines(node)
        assert records and {r["node"] for r in records} == {number}, text_lines[:5]
        assert str(number) in {r["rank"] for r in records}, "the rank process logs too"
        assert not [x for x in text_lines if " INFO " in x or " ERROR " in x], text_lines[:5]


def test_a_malformed_request_id_is_refused_by_name(group: tuple[ServerProcess, ServerProcess]) -> None:
    node0, _ = group
    response = httpx.get(f"{node0.url}/v1/models", headers={"X-Request-Id": "x" * 300}, timeout=10)
    assert response.status_code == 400
    assert "X-Request-Id" in response.json()["error"]["message"]


def test_text_lines_name_node_rank_and_request(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        configure_logging("info", "text", node=2, rank=5)
        logging.getLogger("tpserve.x").info("outside a request")
        token = request_id_var.set("abc-1")
        logging.getLogger("tpserve.x").info("inside one")
        request_id_var.reset(token)
    finally:
        root.handlers[:], root.level = saved
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].endswith(" node2 rank5 INFO tpserve.x: outside a request")
    assert lines[1].endswith(" node2 rank5 INFO tpserve.x: [abc-1] inside one")

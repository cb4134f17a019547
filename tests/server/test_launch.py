"""Command line checks, and a two-node group on one machine: readiness across nodes and failure."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest

from tpserve.engine.launcher import free_port
from tpserve.entrypoints.cli import build_parser, server_args

from .server_process import ServerProcess, poll_until


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tpserve", *args], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--tp", "4", "--nnodes", "3", "--dist-init-addr", "127.0.0.1:5000"], "--tp 4 is not divisible by --nnodes 3"),
        (
            ["--tp", "2", "--nnodes", "2", "--node-rank", "2", "--dist-init-addr", "127.0.0.1:5000"],
            "--node-rank 2 must be in [0, --nnodes 2)",
        ),
        (["--tp", "2", "--nnodes", "2"], "--dist-init-addr is required"),
        (["--tp", "3"], "--tp 3 does not divide the model's 4 attention heads"),
        (["--tp", "2", "--device", "cuda"], "needs 2 GPUs on this node, but 0 are visible"),
        (["--tp", "0"], "must be >= 1"),
        (["--dist-init-addr", "nohost"], "expected HOST:PORT"),
        (["--attn", "fi"], "--attn fi needs --device cuda"),
        (["--attn", "flash"], "unknown attention backend 'flash'"),
        (["--max-prefill-streak", "0"], "--max-prefill-streak must be >= 1, got 0"),
    ],
)
def test_bad_flag_combinations_exit_at_once_with_one_line(tiny_checkpoint, extra: list[str], message: str) -> None:
    started = time.monotonic()
    proc = run_cli("--model", str(tiny_checkpoint("llama")), "--device", "cpu", *extra)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert time.monotonic() - started < 30


def test_model_dir_without_config_is_refused(tmp_path: Path) -> None:
    proc = run_cli("--model", str(tmp_path), "--device", "cpu")
    assert proc.returncode == 2
    assert "no config.json" in proc.stderr


def test_parser_accepts_sglang_names_and_defaults(tiny_checkpoint) -> None:
    path = str(tiny_checkpoint("llama"))
    ns = build_parser().parse_args(["--model-path", path, "--tp-size", "2"])
    assert (ns.tp, ns.nnodes, ns.node_rank, ns.port, ns.page_size, ns.max_prefill_length) == (2, 1, 0, 30000, 16, 8192)
    assert (ns.mem_fraction_static, ns.cuda_graph_max_bs, ns.dist_timeout) == (0.9, 256, 300.0)
    args = server_args(["--model", path, "--device", "cpu"])
    assert args.served_model_name == "llama"
    assert args.engine.attention_backend == "torch"


def test_two_nodes_form_one_group(tiny_checkpoint, tmp_path: Path) -> None:
    model = str(tiny_checkpoint("qwen3"))
    rendezvous = f"127.0.0.1:{free_port()}"
    common = [
        "--model",
        model,
        "--tp",
        "2",
        "--nnodes",
        "2",
        "--dist-init-addr",
        rendezvous,
        "--device",
        "cpu",
        "--served-model-name",
        "tiny",
    ]
    node0 = ServerProcess([*common, "--node-rank", "0"], tmp_path / "node0.log")
    node1: ServerProcess | None = None
    try:
        # Node 0 alone: 503, and the body names the missing rank.
        first = poll_until(node0.health, 60, what="node 0 answering")
        assert first.status_code == 503

        def naming_rank1() -> bool:
            response = node0.health()
            return (
                response is not None
                and response.status_code == 503
                and any(m.startswith("rank 1") for m in response.json()["missing"])
            )

        poll_until(naming_rank1, 60, what="503 naming rank 1")

        node1 = ServerProcess([*common, "--node-rank", "1"], tmp_path / "node1.log")
        node0.wait_healthy(120)
        node1.wait_healthy(60)
        client = openai.OpenAI(base_url=f"{node0.url}/v1", api_key="none", max_retries=0, timeout=60)
        out = client.completions.create(
            model="tiny", prompt="Hello", max_tokens=5, temperature=0, extra_body={"ignore_eos": True}
        )
        assert out.usage.completion_tokens == 5
        assert httpx.get(f"{node1.url}/v1/models").status_code == 404, "nodes k > 0 serve health only"
        # How the group fails together (a rank killed or stalled, under load): test_rank_failure.py.
    finally:
        node0.stop()
        if node1 is not None:
            node1.stop()


def test_sigterm_stops_the_ranks_before_the_server_exits(tiny_checkpoint, tmp_path: Path) -> None:
    """Kubernetes stops pods with SIGTERM: the ranks must be shut down, not killed with their parent."""
    server = ServerProcess(
        ["--model", str(tiny_checkpoint("llama")), "--tp", "2", "--device", "cpu"], tmp_path / "server.log"
    )
    try:
        server.wait_healthy(120)
        server.proc.send_signal(signal.SIGTERM)
        server.wait_exit(30)
        log = server.log_tail(20_000)
        assert "node 0: ranks stopped" in log
        assert "leaked shared_memory" not in log  # rank 0 released the step-plan channel itself
    finally:
        server.stop()

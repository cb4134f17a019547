"""The offline benchmark runs on CPU with the tiny model and reports what it ran."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tpserve.engine.launcher import free_port
from tpserve.testing.health import wait_healthy
from tpserve.testing.metrics_text import scrape_value

REPO = Path(__file__).resolve().parents[2]


def run_bench(script: str, *args: str, timeout_s: float = 300) -> subprocess.CompletedProcess[str]:
    """bench/SCRIPT with ARGS; it must succeed."""
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / script), *args], capture_output=True, text=True, timeout=timeout_s
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


def test_offline_bench_prints_table_and_json(tmp_path: Path, tiny_checkpoint) -> None:
    out = tmp_path / "bench.json"
    proc = run_bench(
        "offline.py",
        "--model",
        str(tiny_checkpoint("qwen3")),
        "--tp",
        "2",
        "--num-requests",
        "5",
        "--min-len",
        "4",
        "--max-len",
        "12",
        "--json",
        str(out),
    )
    assert "out tok/s" in proc.stdout
    [result] = json.loads(out.read_text())
    assert result["requests"] == 5 and result["tp"] == 2
    assert 5 * 4 <= result["output_tokens"] <= 5 * 12
    assert result["output_tokens_per_s"] > 0


def test_online_bench_streams_through_the_http_api(tmp_path: Path, tiny_checkpoint) -> None:
    out = tmp_path / "online.json"
    proc = run_bench(
        "online.py",
        "--model",
        str(tiny_checkpoint("llama")),
        "--device",
        "cpu",
        "--concurrency",
        "1,3",
        "--requests-per-client",
        "2",
        "--input-len",
        "12",
        "--output-len",
        "6",
        "--json",
        str(out),
    )
    assert "TTFT p50" in proc.stdout
    single, crowd = json.loads(out.read_text())
    assert (single["concurrency"], single["requests"]) == (1, 2) and (crowd["concurrency"], crowd["requests"]) == (3, 6)
    for level in (single, crowd):
        assert level["output_tokens_per_s"] * level["seconds"] == pytest.approx(level["requests"] * 6)
        assert 0 < level["ttft_p50_ms"] <= level["ttft_p99_ms"] and 0 < level["itl_p50_ms"] <= level["itl_p99_ms"]
        assert 0 <= level["front_end_cpu_ms_per_request"] < 1000  # the kernel counts in clock ticks of 10 ms
    # the server's HTTP process did measurable work for the requests (its ranks are other processes)
    assert single["front_end_cpu_ms_per_request"] + crowd["front_end_cpu_ms_per_request"] > 0


def test_online_bench_runs_a_group_as_two_nodes_with_the_same_greedy_output(tmp_path: Path, tiny_checkpoint) -> None:
    results = {}
    for nnodes in (1, 2):
        out = tmp_path / f"nodes{nnodes}.json"
        proc = run_bench(
            "online.py",
            "--model",
            str(tiny_checkpoint("llama")),
            "--device",
            "cpu",
            "--tp",
            "2",
            "--nnodes",
            str(nnodes),
            "--greedy-prompts",
            "2",
            "--concurrency",
            "2",
            "--requests-per-client",
            "1",
            "--input-len",
            "8",
            "--output-len",
            "4",
            "--json",
            str(out),
        )
        assert f"nnodes={nnodes}" in proc.stdout
        results[nnodes] = json.loads(out.read_text())
    one, two = results[1], results[2]
    assert (two["tp"], two["nnodes"]) == (2, 2) and two["levels"][0]["requests"] == 2
    assert len(one["greedy"]) == 2 and all(one["greedy"])
    assert two["greedy"] == one["greedy"]


def test_online_bench_measures_a_running_server_by_url_through_chat(tmp_path: Path, tiny_checkpoint) -> None:
    """The way a peer's server is measured: the shape's directory written for it, the server started
    apart, the same client pointed at its URL with chat prompts (and no usage needed to count)."""
    shape = tmp_path / "shape.json"
    shape.write_text((tiny_checkpoint("llama") / "config.json").read_text())
    model_dir = tmp_path / "model"
    run_bench("online.py", "--shape", str(shape), "--write-model-dir", str(model_dir))
    port = free_port()
    flags = ["--load-format", "dummy", "--device", "cpu", "--port", str(port), "--served-model-name", "peer"]
    server = subprocess.Popen(
        [sys.executable, "-m", "tpserve", "--model", str(model_dir), *flags, "--context-length", "64"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url, server, 300)
        out = tmp_path / "online.json"
        proc = run_bench(
            "online.py",
            "--shape",
            str(shape),
            "--url",
            url,
            "--api",
            "chat",
            "--served-model",
            "peer",
            "--label",
            "other-engine",
            "--concurrency",
            "2",
            "--requests-per-client",
            "2",
            "--input-len",
            "40",
            "--output-len",
            "5",
            "--shared-prefix",
            "32",  # two pages of 16 tokens: what the radix cache can share
            "--prefix-groups",
            "1",
            "--json",
            str(out),
        )
        cached = scrape_value(url, "tpserve_prefix_cache_hit_tokens_total")
    finally:
        server.terminate()
        server.wait(timeout=60)
    assert "other-engine, chat" in proc.stdout
    [level] = json.loads(out.read_text())
    assert (level["engine"], level["api"], level["requests"], level["shared_prefix"]) == ("other-engine", "chat", 4, 32)
    assert cached > 0, "the requests after the first start from the shared prefix in the cache"
    assert level["output_tokens_per_s"] * level["seconds"] == pytest.approx(4 * 5)
    assert level["ttft_p50_ms"] > 0 and level["itl_p50_ms"] > 0


def test_prefix_bench_computes_fewer_prompt_tokens_with_the_cache(tmp_path: Path) -> None:
    args = ["--prompts", "2", "--questions", "3", "--system-len", "32", "--conversations", "2", "--turns", "2"]
    proc = run_bench("prefix.py", *args)
    rows = {tuple(line.split()[:2]): line.split() for line in proc.stdout.splitlines()[1:] if line.strip()}
    for workload in ("system", "chat"):
        on, off = rows[(workload, "on")], rows[(workload, "off")]
        assert on[3] == off[3], "the same prompts either way"
        assert int(on[4]) < int(off[4]) == int(off[3]), "the cache saves prompt computation"


def test_scheduler_bench_prints_a_row_per_size() -> None:
    proc = run_bench("scheduler.py", "--running", "4,16", "--steps", "3", timeout_s=120)
    assert [line.split()[:2] for line in proc.stdout.splitlines()[1:]] == [
        ["4", "on"],
        ["4", "off"],
        ["16", "on"],
        ["16", "off"],
    ]


def test_schedule_simulation_times_steps_by_its_cost_model(tmp_path: Path) -> None:
    out = tmp_path / "sim.json"
    run_bench(
        "schedule_sim.py",
        "--clients",
        "1,8",
        "--streaks",
        "1,1000",
        "--output-len",
        "8",
        "--json",
        str(out),
        timeout_s=120,
    )
    rows = json.loads(out.read_text())
    assert [(r["clients"], r["streak"]) for r in rows] == [(1, 1), (1, 1000), (8, 1), (8, 1000)]
    alone = rows[0]  # one request at a time: its first token after one prefill step, then decode steps
    assert alone["ttft_p50"] == pytest.approx(4.0 + 0.0265 * 512) and alone["itl_p50"] == pytest.approx(4.9 + 0.033)
    # Eight prompts arriving 0.5 ms apart: alternating runs a decode step between the first prefill
    # and the late arrivals' one, whose gap then shows in the streams' ITL p99; prefill-first
    # prefills them back to back, before the streams' second tokens, so p99 is one decode step.
    assert rows[3]["itl_p99"] == pytest.approx(4.9 + 0.033 * 8)
    assert rows[2]["itl_p99"] > 10 * rows[3]["itl_p99"]


def test_prefill_bench_counts_model_flops_and_reports_mfu(tmp_path: Path, tiny_checkpoint) -> None:
    out = tmp_path / "prefill.json"
    shape = tiny_checkpoint("llama") / "config.json"
    proc = run_bench(
        "prefill.py",
        "--shape",
        str(shape),
        "--device",
        "cpu",
        "--dtype",
        "float32",
        "--attn",
        "torch",
        "--tokens",
        "96",
        "--iters",
        "1",
        "--peak-tflops",
        "1",
        "--json",
        str(out),
    )
    assert "MFU" in proc.stdout
    result = json.loads(out.read_text())
    assert result["tokens"] == 96 and result["step_ms"] > 0
    assert result["mfu"] == pytest.approx(result["achieved_tflops"] / 1.0)


def test_model_flops_of_the_llama_8b_shape_match_its_parameter_count() -> None:
    sys.path.insert(0, str(REPO / "bench"))
    from prefill import model_flops

    from tpserve.models.config import ModelConfig

    config = ModelConfig.from_dict(json.loads((REPO / "bench" / "shapes" / "llama-3.1-8b.json").read_text()))
    # Llama-3.1-8B: 8.03e9 parameters, 2 x 0.525e9 of them in the embedding and the LM head.
    per_token_linear = model_flops(config, 2) - model_flops(config, 1)  # one more token, minus attention's growth
    attention_growth = 2 * (2 * 2 - 1) * config.num_heads * config.head_dim * config.num_layers
    assert (per_token_linear - attention_growth) / 2 == pytest.approx(8.03e9 - 2 * 0.5254e9, rel=0.01)

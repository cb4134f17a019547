"""A short soak: 256 concurrent streaming clients, a quarter of them walking away mid-request, then
nothing may be left behind (KV pages, scheduler entries, tasks, memory)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx

from tpserve.testing.soak import soak, wait_quiet

from .server_process import healthy_server

CLIENTS = 256
SECONDS = 10.0
MIN_REQUESTS = 2 * CLIENTS  # however slow the machine: the soak runs on until this many have ended
TASK_MARGIN = 3  # the health loop and uvicorn's own tasks come and go
RSS_MARGIN = 1.15  # allocator slack: Python rarely returns freed arenas to the OS


def test_soak_leaves_nothing_behind(tiny_checkpoint, tmp_path: Path) -> None:
    args = ["--model", str(tiny_checkpoint("llama")), "--tp", "2", "--device", "cpu", "--served-model-name", "tiny"]
    with healthy_server(args, tmp_path / "server.log") as server:
        asyncio.run(soak(server.url, 32, 3.0, seed=1))  # first-use allocations belong to the baseline
        baseline = wait_quiet(server.url)

        report = asyncio.run(soak(server.url, CLIENTS, SECONDS, seed=2, min_requests=MIN_REQUESTS))
        after = wait_quiet(server.url)

        assert report.malformed == [], report.malformed[:5]
        assert not report.refused, report.refused
        assert all(report.requests[b] > 10 for b in ("disconnect", "n", "stop", "plain")), report.requests
        assert report.completed + report.disconnected >= MIN_REQUESTS, report
        assert report.completed > CLIENTS and report.disconnected > CLIENTS // 4, report
        assert after["tpserve_num_requests_running"] == 0 and after["tpserve_num_requests_waiting"] == 0
        assert after["tpserve_kv_cache_pages_used"] == 0, "a finished or aborted request kept its KV pages"
        assert after["tpserve_event_loop_tasks"] <= baseline["tpserve_event_loop_tasks"] + TASK_MARGIN, (
            baseline["tpserve_event_loop_tasks"],
            after["tpserve_event_loop_tasks"],
        )
        rss_before, rss_after = baseline["process_resident_memory_bytes"], after["process_resident_memory_bytes"]
        assert rss_after <= rss_before * RSS_MARGIN, (
            f"RSS grew from {rss_before / 2**20:.0f} to {rss_after / 2**20:.0f} MiB"
        )
        answer = httpx.post(f"{server.url}/v1/completions", json={"model": "tiny", "prompt": "hi", "max_tokens": 2})
        assert answer.status_code == 200

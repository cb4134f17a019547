"""A rank fails under load (two nodes, tp=2, 64 streams in flight): no client hangs, /health names the
rank, and every process of the group exits."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import openai
import pytest

from tpserve.engine.launcher import free_port

from .server_process import ServerProcess, poll_until

STREAMS = 64
ANSWERED_WITHIN_S = 5.0
EXITED_WITHIN_S = 30.0


def rank_pids(node: ServerProcess) -> list[int]:
    """The node's rank processes (multiprocessing spawn children; the resource tracker is not one)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_text(errors="replace")
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        if parent == node.proc.pid and "spawn_main" in cmdline:
            found.append(int(entry.name))
    return sorted(found)


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


async def one_stream(client: openai.AsyncOpenAI, first_chunk: asyncio.Semaphore) -> float:
    """Stream until the server ends the stream (normally or with an error); returns when it ended."""
    try:
        stream = await client.completions.create(
            model="tiny", prompt="under load", max_tokens=200, stream=True, extra_body={"ignore_eos": True}
        )
        counted = False
        async for _ in stream:
            if not counted:
                counted = True
                first_chunk.release()
    except openai.APIError:
        pass  # an error event, or the connection closed: either way the client is not left hanging
    return time.monotonic()


@pytest.mark.parametrize(
    ("victim", "sig", "named"),
    [
        ("node1-rank", signal.SIGKILL, "rank 1"),
        ("node0-rank", signal.SIGKILL, "rank 0"),
        ("node1-rank", signal.SIGSTOP, "rank 1"),
    ],
    ids=["kill-worker-rank", "kill-rank0-scheduler", "stall-worker-rank"],
)
def test_rank_failure_under_load(tiny_checkpoint, tmp_path: Path, victim: str, sig: signal.Signals, named: str) -> None:
    common = ["--model", str(tiny_checkpoint("llama")), "--tp", "2", "--nnodes", "2", "--device", "cpu"]
    common += ["--dist-init-addr", f"127.0.0.1:{free_port()}", "--served-model-name", "tiny"]
    node0 = ServerProcess([*common, "--node-rank", "0"], tmp_path / "node0.log")
    node1 = ServerProcess([*common, "--node-rank", "1"], tmp_path / "node1.log")
    try:
        node0.wait_healthy(120)
        node1.wait_healthy(60)
        ranks = {"node0-rank": rank_pids(node0), "node1-rank": rank_pids(node1)}
        assert all(len(pids) == 1 for pids in ranks.values()), ranks
        group = [node0.proc.pid, node1.proc.pid, *ranks["node0-rank"], *ranks["node1-rank"]]

        async def scenario() -> tuple[float, list[float]]:
            client = openai.AsyncOpenAI(base_url=f"{node0.url}/v1", api_key="none", max_retries=0, timeout=60)
            first_chunk = asyncio.Semaphore(0)
            streams = [asyncio.create_task(one_stream(client, first_chunk)) for _ in range(STREAMS)]
            for _ in range(STREAMS):
                await asyncio.wait_for(first_chunk.acquire(), 60)
            os.kill(ranks[victim][0], sig)
            return time.monotonic(), await asyncio.wait_for(asyncio.gather(*streams), 30)

        faulted_at, ended = asyncio.run(scenario())
        slowest = max(ended) - faulted_at
        print(f"{victim} {sig.name}: every stream ended within {slowest:.2f}s of the fault")
        assert slowest < ANSWERED_WITHIN_S, f"a client waited {slowest:.1f}s after the fault"

        def failed_naming_rank() -> bool:
            response = node0.health()
            return response is None or (response.status_code == 503 and named in str(response.json()["failed"]))

        poll_until(failed_naming_rank, max(0.1, ANSWERED_WITHIN_S - (time.monotonic() - faulted_at)), what=named)
        poll_until(lambda: not any(alive(pid) for pid in group), EXITED_WITHIN_S, what="every process of the group")
        print(f"{victim} {sig.name}: every process of the group gone {time.monotonic() - faulted_at:.1f}s after it")
        assert node0.proc.returncode != 0 and node1.proc.returncode != 0
    finally:
        for pid in ranks.get(victim, []) if "ranks" in locals() else []:
            if sig == signal.SIGSTOP and alive(pid):
                os.kill(pid, signal.SIGKILL)
        node0.stop()
        node1.stop()

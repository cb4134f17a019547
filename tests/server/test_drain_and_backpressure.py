"""SIGTERM drains, the waiting queue is bounded, requests have a time limit: a real server, real clients."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import httpx
import openai
import pytest

from tpserve.testing.metrics_text import scrape_value, value

from .server_process import ServerProcess, healthy_server, poll_until

STREAMS = 32
TOKENS = 200  # the tiny model's context is 256


@pytest.fixture(scope="module")
def model_dir(tiny_checkpoint) -> Path:
    return tiny_checkpoint("llama")


def base(model_dir: Path, *extra: str) -> list[str]:
    return ["--model", str(model_dir), "--device", "cpu", "--served-model-name", "tiny", *extra]


async def stream_tokens(client: openai.AsyncOpenAI, first_chunk: asyncio.Semaphore) -> tuple[int, str]:
    """One streamed completion: (tokens the server reported in usage, finish reason)."""
    stream = await client.completions.create(
        model="tiny",
        prompt="Drain me gently",
        max_tokens=TOKENS,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},
    )
    finish, used, counted = "", 0, False
    async for chunk in stream:
        if chunk.choices:
            finish = chunk.choices[0].finish_reason or finish
        if chunk.usage is not None:
            used = chunk.usage.completion_tokens
        if not counted:
            counted = True
            first_chunk.release()
    return used, finish


def test_sigterm_finishes_every_stream_then_exits(model_dir: Path, tmp_path: Path) -> None:
    server = ServerProcess(base(model_dir, "--tp", "2"), tmp_path / "server.log")
    try:
        server.wait_healthy()

        async def scenario() -> list[tuple[int, str]]:
            client = openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0, timeout=120)
            first_chunk = asyncio.Semaphore(0)
            streams = [asyncio.create_task(stream_tokens(client, first_chunk)) for _ in range(STREAMS)]
            for _ in range(STREAMS):  # every stream has its first chunk
                await asyncio.wait_for(first_chunk.acquire(), 60)
            server.proc.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            async with httpx.AsyncClient(base_url=server.url) as http:
                health = await http.get("/health")
                while health.status_code != 503 and time.monotonic() - signalled < 2:
                    health = await http.get("/health")
                assert health.status_code == 503 and health.json()["status"] == "draining", health.text
                assert time.monotonic() - signalled < 2, "health must turn 503 at once"
                refused = await http.post("/v1/completions", json={"model": "tiny", "prompt": "late", "max_tokens": 4})
                assert refused.status_code == 503 and "shutting down" in refused.json()["error"]["message"]
            return await asyncio.gather(*streams)

        results = asyncio.run(scenario())
        assert results == [(TOKENS, "length")] * STREAMS, "every in-flight stream completes in full"
        assert server.wait_exit(30) == 0, server.log_tail()
        assert "node 0: drained" in server.log_tail(20_000)
    finally:
        server.stop()


def test_streams_still_running_at_the_shutdown_timeout_end_with_an_error(model_dir: Path, tmp_path: Path) -> None:
    server = ServerProcess(
        base(model_dir, "--shutdown-timeout", "0.5", "--max-running-requests", "1"), tmp_path / "s.log"
    )
    try:
        server.wait_healthy()

        async def scenario() -> list[BaseException | tuple[int, str]]:
            client = openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0, timeout=120)
            first_chunk = asyncio.Semaphore(0)
            # One runs, three wait behind it: far more work than half a second.
            streams = [asyncio.create_task(stream_tokens(client, first_chunk)) for _ in range(4)]
            await asyncio.wait_for(first_chunk.acquire(), 60)
            server.proc.send_signal(signal.SIGTERM)
            return await asyncio.gather(*streams, return_exceptions=True)

        results = asyncio.run(scenario())
        errors = [r for r in results if isinstance(r, openai.APIError)]
        assert errors and all("shut down before the request finished" in str(e) for e in errors), results
        assert server.wait_exit(30) == 0, server.log_tail()
    finally:
        server.stop()


def test_a_full_queue_answers_429_with_retry_after(model_dir: Path, tmp_path: Path) -> None:
    args = base(model_dir, "--max-running-requests", "1", "--max-queued-requests", "2")
    with healthy_server(args, tmp_path / "server.log") as server:

        async def burst() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=server.url, timeout=120) as http:
                body = {"model": "tiny", "prompt": "queue", "max_tokens": 64, "ignore_eos": True}
                return await asyncio.gather(*(http.post("/v1/completions", json=body) for _ in range(12)))

        answers = asyncio.run(burst())
        refused = [a for a in answers if a.status_code == 429]
        served = [a for a in answers if a.status_code == 200]
        assert len(refused) + len(served) == len(answers), [a.text for a in answers]
        assert refused and served, [a.status_code for a in answers]
        assert all(a.headers["retry-after"] == "1" for a in refused)
        assert "--max-queued-requests" in refused[0].json()["error"]["message"]
        assert all(a.json()["usage"]["completion_tokens"] == 64 for a in served)
        metrics = httpx.get(f"{server.url}/metrics").text
        rejected = value(metrics, "tpserve_requests_rejected_total", reason="queue_full")
        assert rejected >= len(refused)
        assert "tpserve_num_requests_waiting" in metrics
        # Still serving once the burst is over.
        again = httpx.post(f"{server.url}/v1/completions", json={"model": "tiny", "prompt": "hi", "max_tokens": 2})
        assert again.status_code == 200


def test_a_request_past_its_time_limit_is_aborted(model_dir: Path, tmp_path: Path) -> None:
    args = base(model_dir, "--max-running-requests", "1", "--request-timeout", "0.3")
    with healthy_server(args, tmp_path / "server.log") as server:
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0, timeout=60)
        long = {"model": "tiny", "prompt": "slow", "max_tokens": TOKENS, "n": 16, "extra_body": {"ignore_eos": True}}
        with pytest.raises(openai.APIStatusError) as refused:
            client.completions.create(**long)
        assert refused.value.status_code == 504 and "--request-timeout" in str(refused.value)
        with pytest.raises(openai.APIError, match="--request-timeout"):
            for _ in client.completions.create(**long, stream=True):  # type: ignore[call-overload]
                pass
        metrics = httpx.get(f"{server.url}/metrics").text
        assert value(metrics, "tpserve_requests_timed_out_total") == 2, metrics
        # The aborted choices left the engine: a short request is served at once.
        out = client.completions.create(model="tiny", prompt="hi", max_tokens=3, extra_body={"ignore_eos": True})
        assert out.usage is not None and out.usage.completion_tokens == 3
        poll_until(lambda: scrape_value(server.url, "tpserve_num_requests_running") == 0, 10)

"""A server whose KV cache is far smaller than its context and its traffic: it keeps answering.

The case that used to livelock (`--max-total-tokens 256 --context-length 2048`, several requests
asking for more tokens than the cache holds): the context is clamped to the cache, requests that
cannot fit it are refused at once, and requests that fit alone but not together all finish.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Iterator

import httpx
import openai
import pytest

from tpserve.testing.metrics_text import value

from .server_process import ServerProcess, healthy_server


@pytest.fixture(scope="module")
def server(tiny_checkpoint, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    log = tmp_path_factory.mktemp("pressure") / "server.log"
    args = ["--model", str(tiny_checkpoint("llama")), "--device", "cpu", "--served-model-name", "tiny"]
    args += ["--max-total-tokens", "256", "--context-length", "2048", "--page-size", "16"]
    with healthy_server(args, log) as proc:
        yield proc


@pytest.fixture()
def client(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=60)


def test_the_context_is_clamped_to_the_cache_with_a_warning(server: ServerProcess) -> None:
    [model] = httpx.get(f"{server.url}/v1/models").json()["data"]
    assert model["max_model_len"] == 256
    assert "context length 2048 is more than the KV cache holds (256 tokens): clamped to 256" in server.log_tail(20000)


def test_requests_beyond_the_cache_are_refused_and_others_still_served(client: openai.OpenAI) -> None:
    def oversized(i: int) -> int:
        try:
            client.completions.create(model="tiny", prompt=[10 + i, 11, 12, 13], max_tokens=600)
        except openai.BadRequestError as exc:
            return exc.status_code
        return 200

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        assert list(pool.map(oversized, range(4))) == [400] * 4
    small = client.completions.create(model="tiny", prompt=[5, 6, 7, 8], max_tokens=4, temperature=0)
    assert small.usage is not None and small.usage.completion_tokens == 4


def test_requests_that_fit_alone_but_not_together_all_finish(client: openai.OpenAI) -> None:
    prompts = [[20 + i, *range(30, 60)] for i in range(4)]  # 31 tokens + 200: one at a time fits

    def complete(prompt: list[int]) -> tuple[str | None, int]:
        reply = client.completions.create(
            model="tiny", prompt=prompt, max_tokens=200, temperature=0, extra_body={"ignore_eos": True}
        )
        assert reply.usage is not None
        return reply.choices[0].finish_reason, reply.usage.completion_tokens

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        assert list(pool.map(complete, prompts)) == [("length", 200)] * 4
    metrics = httpx.get(f"{client.base_url.scheme}://{client.base_url.host}:{client.base_url.port}/metrics").text
    assert value(metrics, "tpserve_kv_cache_pages_used") == 0

"""The OpenAI API of a real `python -m tpserve --tp 2` process, through the real `openai` client."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import httpx
import openai
import pytest
from pydantic import BaseModel
from transformers import AutoTokenizer

from tpserve import LLM, SamplingParams
from tpserve.testing.metrics_text import scrape_value

from .server_process import ServerProcess, healthy_server, poll_until
from .test_prompt_logprobs import hf_prompt_logprobs

API_KEY = "test-key"
PROMPTS = [f"Tensor parallelism number {i}: " for i in range(32)]


@pytest.fixture(scope="module")
def model_dir(tiny_checkpoint) -> Path:
    return tiny_checkpoint("llama")


@pytest.fixture(scope="module")
def server(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    log = tmp_path_factory.mktemp("server") / "server.log"
    args = ["--model", str(model_dir), "--tp", "2", "--device", "cpu", "--served-model-name", "tiny"]
    with healthy_server([*args, "--api-key", API_KEY, "--max-prefill-length", "64"], log) as proc:
        yield proc


@pytest.fixture()
def client(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, max_retries=0, timeout=60)


def greedy(**extra: object) -> dict:
    return {"temperature": 0, "extra_body": {"ignore_eos": True}} | extra


def metric(server: ServerProcess, name: str, **labels: str) -> float:
    return scrape_value(server.url, name, model_name="tiny", **labels)


# -- happy paths ---------------------------------------------------------------------------------
def test_models_lists_the_served_name(client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list().data] == ["tiny"]


def test_completion_stream_equals_non_stream_and_usage_counts_tokens(client: openai.OpenAI) -> None:
    full = client.completions.create(model="tiny", prompt=PROMPTS[0], max_tokens=10, logprobs=0, **greedy())
    choice = full.choices[0]
    assert choice.finish_reason == "length"
    assert full.usage.completion_tokens == 10 == len(choice.logprobs.tokens)
    assert full.usage.prompt_tokens > 0
    assert full.usage.total_tokens == full.usage.prompt_tokens + 10
    chunks = list(
        client.completions.create(
            model="tiny",
            prompt=PROMPTS[0],
            max_tokens=10,
            stream=True,
            stream_options={"include_usage": True},
            **greedy(),
        )
    )
    assert "".join(c.choices[0].text for c in chunks if c.choices) == choice.text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == 10


def test_chat_stream_and_non_stream_agree(client: openai.OpenAI) -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello, world!"}]
    full = client.chat.completions.create(model="tiny", messages=messages, max_tokens=12, **greedy())
    assert full.choices[0].message.role == "assistant"
    assert full.usage.completion_tokens == 12
    stream = client.chat.completions.create(model="tiny", messages=messages, max_tokens=12, stream=True, **greedy())
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == full.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == "length"


def test_chat_logprobs(client: openai.OpenAI) -> None:
    out = client.chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=4,
        logprobs=True,
        top_logprobs=3,
        **greedy(),
    )
    content = out.choices[0].logprobs.content
    assert len(content) == 4
    for entry in content:
        assert len(entry.top_logprobs) == 3
        # Greedy: the chosen token is the most likely one.
        assert entry.logprob == pytest.approx(entry.top_logprobs[0].logprob)
        assert entry.logprob <= 0


def test_n_choices_with_seed_are_distinct_and_reproducible(client: openai.OpenAI) -> None:
    def run() -> list[str]:
        out = client.completions.create(
            model="tiny",
            prompt=PROMPTS[1],
            max_tokens=12,
            n=2,
            seed=7,
            temperature=1.0,
            extra_body={"ignore_eos": True},
        )
        assert sorted(c.index for c in out.choices) == [0, 1]
        assert out.usage.completion_tokens == 24
        return [c.text for c in sorted(out.choices, key=lambda c: c.index)]

    first = run()
    assert first == run()
    assert first[0] != first[1]


def test_seeded_chat_is_reproducible(client: openai.OpenAI) -> None:
    def run(seed: int) -> str:
        out = client.chat.completions.create(
            model="tiny",
            messages=[{"role": "user", "content": "count"}],
            max_tokens=16,
            temperature=1.0,
            seed=seed,
            extra_body={"ignore_eos": True},
        )
        return out.choices[0].message.content or ""

    assert run(11) == run(11)
    assert run(11) != run(12)


def test_stop_string_across_token_boundary(client: openai.OpenAI) -> None:
    base = client.completions.create(model="tiny", prompt=PROMPTS[2], max_tokens=16, logprobs=0, **greedy())
    tokens = [t for t in base.choices[0].logprobs.tokens]
    text = base.choices[0].text
    # A stop string made of the end of token 3 and the start of token 4, so no single token holds it.
    start = len("".join(tokens[:3]))
    pieces = [t for t in tokens[3:5] if t]
    assert len(pieces) == 2 and len(pieces[0]) >= 1 and len(pieces[1]) >= 1
    stop = pieces[0][-1] + pieces[1][0]
    cut = text.find(stop)
    assert 0 <= cut <= start + len(pieces[0]) - 1
    for stream in (False, True):
        out = client.completions.create(
            model="tiny", prompt=PROMPTS[2], max_tokens=16, stop=[stop], stream=stream, **greedy()
        )
        if stream:
            chunks = list(out)
            got, reason = "".join(c.choices[0].text for c in chunks), chunks[-1].choices[0].finish_reason
        else:
            got, reason = out.choices[0].text, out.choices[0].finish_reason
        assert got == text[:cut]
        assert reason == "stop"


def test_http_greedy_equals_offline_api(client: openai.OpenAI, model_dir: Path) -> None:
    prompts = PROMPTS[3:6]
    http = [
        client.completions.create(model="tiny", prompt=p, max_tokens=14, **greedy()).choices[0].text for p in prompts
    ]
    with LLM(str(model_dir), tp=2) as llm:
        offline = llm.generate(prompts, SamplingParams(max_tokens=14, temperature=0, ignore_eos=True))
    assert http == [o.text for o in offline]


def test_concurrent_streams_each_get_their_sequential_result(client: openai.OpenAI, server: ServerProcess) -> None:
    sequential = [
        client.completions.create(model="tiny", prompt=p, max_tokens=12, **greedy()).choices[0].text for p in PROMPTS
    ]

    async def stream_all() -> list[str]:
        aclient = openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, max_retries=0, timeout=120)

        async def one(prompt: str) -> str:
            stream = await aclient.completions.create(
                model="tiny", prompt=prompt, max_tokens=12, stream=True, **greedy()
            )
            return "".join([c.choices[0].text async for c in stream])

        try:
            return await asyncio.gather(*(one(p) for p in PROMPTS))
        finally:
            await aclient.close()

    assert asyncio.run(stream_all()) == sequential


def test_disconnect_mid_stream_frees_pages(server: ServerProcess) -> None:
    poll_until(lambda: metric(server, "tpserve_kv_cache_pages_used") == 0, 30, what="idle server")
    body = {
        "model": "tiny",
        "prompt": PROMPTS[4],
        "max_tokens": 200,
        "stream": True,
        "temperature": 0,
        "ignore_eos": True,
    }
    with httpx.stream(
        "POST", f"{server.url}/v1/completions", json=body, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60
    ) as response:
        lines = response.iter_lines()
        received = [next(lines) for _ in range(6)]
        assert any(line.startswith("data: ") for line in received)
        assert metric(server, "tpserve_kv_cache_pages_used") > 0
    # Connection closed after a few tokens: the request is aborted and its pages come back.
    poll_until(lambda: metric(server, "tpserve_kv_cache_pages_used") == 0, 15, what="pages freed")
    assert metric(server, "tpserve_num_requests_running") == 0


def test_health_generate_and_metrics(server: ServerProcess) -> None:
    assert httpx.get(f"{server.url}/health_generate", timeout=30).status_code == 200
    health = httpx.get(f"{server.url}/health").json()
    assert health["status"] == "ok" and [r["phase"] for r in health["ranks"]] == ["ready", "ready"]
    assert metric(server, "tpserve_ranks_ready") == 2
    assert metric(server, "tpserve_kv_cache_pages_capacity") > 0
    assert metric(server, "tpserve_generation_tokens_total") > 0
    text = httpx.get(f"{server.url}/metrics").text
    assert "tpserve_time_to_first_token_seconds_bucket" in text
    assert "tpserve_inter_token_latency_seconds_bucket" in text


def test_prefix_cache_metrics_count_a_shared_prompt(server: ServerProcess, client: openai.OpenAI) -> None:
    hits, queries = (
        metric(server, "tpserve_prefix_cache_hit_tokens_total"),
        metric(server, "tpserve_prefix_cache_queries_total"),
    )
    prompt = list(range(100, 164))  # four full pages of 16
    for tail in (7, 8):
        client.completions.create(model="tiny", prompt=[*prompt, tail], max_tokens=2, **greedy())
    # The second request found the first's 64 prompt tokens cached.
    assert metric(server, "tpserve_prefix_cache_hit_tokens_total") - hits >= 64
    assert metric(server, "tpserve_prefix_cache_queries_total") - queries >= 2 * 65
    assert 0 < metric(server, "tpserve_kv_cache_usage_perc") <= 1, "cached pages count as used"
    assert metric(server, "tpserve_kv_cache_pages_used") == 0, "but no request holds them"
    assert metric(server, "tpserve_num_preemptions_total") >= 0
    assert metric(server, "tpserve_prefix_cache_evicted_pages_total") >= 0


def test_echo_scores_the_prompt_like_transformers(client: openai.OpenAI, model_dir: Path) -> None:
    """What lm-evaluation-harness sends to score a continuation: echo, logprobs, max_tokens 0."""
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    ids = tokenizer.encode("Tensor parallelism splits every layer across ranks of one group")
    response = client.completions.create(model="tiny", prompt=ids, max_tokens=0, echo=True, logprobs=2, temperature=0)
    [choice] = response.choices
    assert choice.text == tokenizer.decode(ids)
    assert response.usage is not None and response.usage.completion_tokens == 0
    logprobs = choice.logprobs
    assert logprobs is not None and logprobs.token_logprobs is not None and logprobs.top_logprobs is not None
    assert len(logprobs.token_logprobs) == len(ids)
    assert logprobs.token_logprobs[0] is None and logprobs.top_logprobs[0] is None
    expected = hf_prompt_logprobs(model_dir, ids)
    for j in range(1, len(ids)):
        assert logprobs.token_logprobs[j] == pytest.approx(float(expected[j - 1][ids[j]]), abs=1e-4)
        assert len(logprobs.top_logprobs[j]) <= 2
    # With tokens to generate, the greedy continuation follows the echoed prompt.
    longer = client.completions.create(model="tiny", prompt=ids, max_tokens=3, echo=True, logprobs=0, **greedy())
    plain = client.completions.create(model="tiny", prompt=ids, max_tokens=3, **greedy())
    echoed = longer.choices[0]
    assert echoed.text == tokenizer.decode(ids) + plain.choices[0].text
    assert echoed.logprobs is not None and echoed.logprobs.token_logprobs is not None
    assert len(echoed.logprobs.token_logprobs) == len(ids) + 3
    assert echoed.logprobs.token_logprobs[1 : len(ids)] == pytest.approx(logprobs.token_logprobs[1:], abs=1e-4)
    # Streamed, the prompt comes first, then the same continuation and log-probabilities.
    for max_tokens in (0, 3):
        whole = client.completions.create(
            model="tiny", prompt=ids, max_tokens=max_tokens, echo=True, logprobs=1, **greedy()
        )
        stream = client.completions.create(
            model="tiny", prompt=ids, max_tokens=max_tokens, echo=True, logprobs=1, stream=True, **greedy()
        )
        text, token_logprobs, offsets, finish = "", [], [], None
        for chunk in stream:
            [part] = chunk.choices
            text += part.text
            if part.logprobs is not None:
                token_logprobs += part.logprobs.token_logprobs or []
                offsets += part.logprobs.text_offset or []
            finish = part.finish_reason or finish
        [expected_choice] = whole.choices
        assert text == expected_choice.text and finish == expected_choice.finish_reason
        assert expected_choice.logprobs is not None
        assert token_logprobs == pytest.approx(expected_choice.logprobs.token_logprobs, abs=1e-5)
        # The echoed prompt's offsets (a stream's generated tokens are placed by the text sent so far).
        assert offsets[: len(ids)] == expected_choice.logprobs.text_offset[: len(ids)]


def test_vllm_prompt_logprobs_extension(client: openai.OpenAI, model_dir: Path) -> None:
    ids = [5, 6, 7, 8, 9, 10]
    response = client.completions.create(model="tiny", prompt=ids, max_tokens=1, extra_body={"prompt_logprobs": 1})
    entries = (response.choices[0].model_extra or {})["prompt_logprobs"]
    expected = hf_prompt_logprobs(model_dir, ids)
    assert entries[0] is None and len(entries) == len(ids)
    for j in range(1, len(ids)):
        assert entries[j][str(ids[j])]["logprob"] == pytest.approx(float(expected[j - 1][ids[j]]), abs=1e-4)
        best = int(expected[j - 1].argmax())
        assert entries[j][str(best)]["rank"] == 1


def test_unknown_fields_are_ignored_with_one_warning_each(server: ServerProcess) -> None:
    """What vLLM's and SGLang's clients send beyond OpenAI's fields does not break a request."""
    body = {"model": "tiny", "prompt": "hi", "max_tokens": 2, "frobnicate": True, "repetition_penalty": 1.0}
    for _ in range(2):
        response = post(server, "/v1/completions", json=body)
        assert response.status_code == 200, response.text
    chat = {"model": "tiny", "messages": [{"role": "user", "content": "x", "weight": 1}], "max_tokens": 2}
    assert post(server, "/v1/chat/completions", json=chat).status_code == 200

    def log_with_the_chat_warning() -> str | None:
        text = server.log_path.read_text()
        return text if "'weight'" in text else None

    log = poll_until(log_with_the_chat_warning, timeout_s=10)
    assert log.count("ignoring the unknown request field 'frobnicate'") == 1
    assert "repetition_penalty" not in log, "a known field is not warned about"


def test_continuous_usage_stats_put_usage_in_every_chunk(client: openai.OpenAI) -> None:
    stream = client.completions.create(
        model="tiny",
        prompt="Continuous usage",
        max_tokens=4,
        stream=True,
        stream_options={"include_usage": True, "continuous_usage_stats": True},  # type: ignore[typeddict-unknown-key]
        **greedy(),
    )
    chunks = list(stream)
    assert all(chunk.usage is not None for chunk in chunks)
    completion_tokens = [chunk.usage.completion_tokens for chunk in chunks if chunk.usage is not None]
    assert completion_tokens == sorted(completion_tokens) and completion_tokens[-1] == 4


def test_tokenize_detokenize_and_version(server: ServerProcess, model_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    text = "Tensor parallelism"
    tokenized = post(server, "/tokenize", json={"model": "tiny", "prompt": text}).json()
    assert tokenized["tokens"] == tokenizer.encode(text) and tokenized["count"] == len(tokenized["tokens"])
    assert tokenized["max_model_len"] > 0
    back = post(server, "/detokenize", json={"model": "tiny", "tokens": tokenized["tokens"]}).json()
    assert back["prompt"] == tokenizer.decode(tokenized["tokens"])
    chat = post(server, "/tokenize", json={"messages": [{"role": "user", "content": text}]}).json()
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
    )
    assert chat["tokens"] == tokenizer.encode(rendered, add_special_tokens=False)
    bad = post(server, "/detokenize", json={"tokens": [10**9]})
    assert bad.status_code == 400 and "tokens" in bad.json()["error"]["message"]
    neither = post(server, "/tokenize", json={"model": "tiny"})
    assert neither.status_code == 400
    version = httpx.get(f"{server.url}/version").json()
    assert isinstance(version["version"], str) and version["version"]


class Answer(BaseModel):
    color: Literal["red", "green", "blue"]
    ok: bool


def test_chat_parse_returns_a_validated_pydantic_object(client: openai.OpenAI) -> None:
    """openai's `chat.completions.parse` sends a strict json_schema response_format and parses."""
    completion = client.chat.completions.parse(
        model="tiny", messages=[{"role": "user", "content": "A colour?"}], response_format=Answer, max_tokens=64
    )
    parsed = completion.choices[0].message.parsed
    assert isinstance(parsed, Answer)
    assert completion.choices[0].finish_reason == "stop"


def test_guided_extensions_constrain_completions(client: openai.OpenAI) -> None:
    choices = ["alpha", "beta", "gamma"]
    picked = client.completions.create(
        model="tiny", prompt="Pick: ", max_tokens=16, n=3, seed=1, extra_body={"guided_choice": choices}
    )
    assert all(c.text in choices for c in picked.choices)
    regex = client.completions.create(
        model="tiny", prompt="Code: ", max_tokens=16, temperature=1.0, extra_body={"regex": "[A-Z]{3}-[0-9]{2}"}
    )
    assert re.fullmatch("[A-Z]{3}-[0-9]{2}", regex.choices[0].text)
    json_object = client.chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": "JSON"}],
        response_format={"type": "json_object"},
        max_tokens=128,
        temperature=0,
    )
    assert isinstance(json.loads(json_object.choices[0].message.content or ""), dict)


def test_bad_structured_outputs_are_400(server: ServerProcess) -> None:
    bad_schema = {
        "model": "tiny",
        "messages": [{"role": "user", "content": "x"}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "no-such-type"}}},
    }
    response = post(server, "/v1/chat/completions", json=bad_schema)
    assert response.status_code == 400 and "response_format" in response.json()["error"]["message"]
    two = {"model": "tiny", "prompt": "x", "guided_regex": "a+", "guided_choice": ["a"]}
    response = post(server, "/v1/completions", json=two)
    assert response.status_code == 400 and "guided_regex" in response.json()["error"]["message"]
    assert post(server, "/v1/completions", json={"model": "tiny", "prompt": "x", "max_tokens": 2}).status_code == 200


def test_include_stop_str_in_output(client: openai.OpenAI) -> None:
    full = client.completions.create(model="tiny", prompt="Stops: ", max_tokens=12, **greedy()).choices[0].text
    stop = full[4:7]
    assert stop and full.index(stop) == 4, "a stop string found first where it was cut from"
    cut = client.completions.create(model="tiny", prompt="Stops: ", max_tokens=12, stop=[stop], **greedy())
    kept = client.completions.create(
        model="tiny",
        prompt="Stops: ",
        max_tokens=12,
        stop=[stop],
        temperature=0,
        extra_body={"ignore_eos": True, "include_stop_str_in_output": True},
    )
    assert cut.choices[0].text == full[:4]
    assert kept.choices[0].text == full[:7] and kept.choices[0].finish_reason == "stop"


def test_skip_special_tokens_false_shows_them(client: openai.OpenAI, model_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    special = tokenizer.convert_tokens_to_ids("<|im_end|>")
    body = {"ignore_eos": True, "logit_bias": {str(special): 100}}
    hidden = client.completions.create(model="tiny", prompt="x", max_tokens=3, temperature=0, extra_body=body)
    shown = client.completions.create(
        model="tiny", prompt="x", max_tokens=3, temperature=0, extra_body=body | {"skip_special_tokens": False}
    )
    assert hidden.choices[0].text == ""
    assert shown.choices[0].text == "<|im_end|>" * 3


def test_chat_template_flags(client: openai.OpenAI, model_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    conversation = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello, I"}]

    def prompt_tokens(**flags: object) -> int:
        response = client.chat.completions.create(
            model="tiny",
            messages=conversation,
            max_tokens=1,
            extra_body=flags,  # type: ignore[arg-type]
        )
        assert response.usage is not None
        return response.usage.prompt_tokens

    def rendered(**flags: object) -> int:
        text = tokenizer.apply_chat_template(conversation, tokenize=False, **flags)
        return len(tokenizer.encode(text, add_special_tokens=False))

    assert prompt_tokens() == rendered(add_generation_prompt=True)
    assert prompt_tokens(add_generation_prompt=False) == rendered(add_generation_prompt=False)
    continued = prompt_tokens(add_generation_prompt=False, continue_final_message=True)
    assert continued == rendered(continue_final_message=True) < rendered(add_generation_prompt=False)
    kwargs = {"chat_template_kwargs": {"enable_thinking": False}}
    assert prompt_tokens(**kwargs) == rendered(add_generation_prompt=True, enable_thinking=False)


def test_best_of_returns_the_most_likely_candidates(client: openai.OpenAI) -> None:
    """best_of candidates are ranked by log-probability per token; the best n come back."""
    common = {"model": "tiny", "prompt": "Best of: ", "max_tokens": 6, "temperature": 1.0, "seed": 11}
    best = client.completions.create(n=2, best_of=4, **common)  # type: ignore[arg-type]
    every = client.completions.create(n=4, logprobs=0, **common)  # type: ignore[arg-type]

    # The same seeds give the same four candidates: rank them as best_of must.
    def mean_logprob(choice: Any) -> float:
        values = choice.logprobs.token_logprobs
        return sum(values) / len(values)

    ranked = sorted(every.choices, key=mean_logprob, reverse=True)
    assert [c.text for c in best.choices] == [c.text for c in ranked[:2]]
    assert [c.index for c in best.choices] == [0, 1] and best.choices[0].logprobs is None
    assert best.usage is not None and every.usage is not None
    assert best.usage.completion_tokens == every.usage.completion_tokens, "every candidate's tokens count"


# Bodies load generators send, field by field as their request code builds them (vLLM's
# `vllm bench serve` openai-completions and openai-chat backends; guidellm's OpenAI backend),
# reconstructed here rather than captured from a live run.
LOAD_GENERATOR_BODIES = [
    (
        "/v1/completions",
        {
            "model": "tiny",
            "prompt": "Benchmark prompt",
            "temperature": 0.0,
            "repetition_penalty": 1.0,
            "max_tokens": 4,
            "logprobs": None,
            "stream": True,
            "stream_options": {"include_usage": True},
            "ignore_eos": True,
        },
    ),
    (
        "/v1/chat/completions",
        {
            "model": "tiny",
            "messages": [{"role": "user", "content": [{"type": "text", "text": "Benchmark prompt"}]}],
            "temperature": 0.0,
            "max_completion_tokens": 4,
            "stream": True,
            "stream_options": {"include_usage": True},
            "ignore_eos": True,
        },
    ),
    (
        "/v1/completions",
        {
            "model": "tiny",
            "prompt": "Benchmark prompt",
            "max_tokens": 4,
            "stop": None,
            "ignore_eos": True,
            "stream": True,
            "stream_options": {"include_usage": True, "continuous_usage_stats": True},
        },
    ),
]


@pytest.mark.parametrize(("path", "body"), LOAD_GENERATOR_BODIES, ids=["vllm-completions", "vllm-chat", "guidellm"])
def test_load_generator_bodies_stream_to_the_end(server: ServerProcess, path: str, body: dict) -> None:
    response = post(server, path, json=body)
    assert response.status_code == 200, response.text
    events = [line.removeprefix("data: ") for line in response.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    usage_chunks = [json.loads(e)["usage"] for e in events[:-1] if json.loads(e).get("usage")]
    assert usage_chunks and usage_chunks[-1]["completion_tokens"] == 4


# -- bad input -----------------------------------------------------------------------------------
def test_api_key_is_required(server: ServerProcess) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        response = httpx.get(f"{server.url}/v1/models", headers=headers)
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "invalid_api_key"
        assert response.headers["x-request-id"]  # refused requests are traced like any other
    refused = httpx.post(f"{server.url}/v1/chat/completions", json={"model": "m", "messages": []})
    assert refused.status_code == 401
    # Probes and scrapers carry no key: only the API itself is guarded.
    assert httpx.get(f"{server.url}/health").status_code == 200
    assert httpx.get(f"{server.url}/metrics").status_code == 200


def post(
    server: ServerProcess, path: str, content: bytes | None = None, json: object = None, headers: dict | None = None
) -> httpx.Response:
    headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"} | (headers or {})
    return httpx.post(f"{server.url}{path}", content=content, json=json, headers=headers, timeout=30)


BAD_COMPLETIONS = [
    ({"model": "tiny", "prompt": "hi", "max_tokens": -1}, "max_tokens"),
    ({"model": "tiny", "prompt": "hi", "max_tokens": 10**9}, "max_tokens"),
    ({"model": "tiny", "prompt": "hi", "max_tokens": "ten"}, "max_tokens"),
    ({"model": "tiny", "prompt": "hi", "temperature": "hot"}, "temperature"),
    ({"model": "tiny", "prompt": "hi", "n": 0}, "n"),
    ({"model": "tiny", "prompt": "hi", "n": 1000}, "n"),
    ({"model": "tiny", "prompt": "hi", "stream": "yes"}, "stream"),
    ({"model": "tiny", "prompt": "hi", "echo": 1}, "echo"),
    ({"model": "tiny", "prompt": "hi", "max_tokens": 0}, "max_tokens"),
    ({"model": "tiny", "prompt": "hi", "repetition_penalty": 0}, "repetition_penalty"),
    ({"model": "tiny", "prompt": "hi", "min_p": 1.5}, "min_p"),
    ({"model": "tiny", "prompt": "hi", "presence_penalty": 3}, "presence_penalty"),
    ({"model": "tiny", "prompt": "hi", "logit_bias": {"abc": 1}}, "logit_bias"),
    ({"model": "tiny", "prompt": "hi", "logit_bias": {"99999": 1}}, "logit_bias"),
    ({"model": "tiny", "prompt": "hi", "logit_bias": {"5": 500}}, "logit_bias"),
    ({"model": "tiny", "prompt": ""}, "prompt"),
    ({"model": "tiny", "prompt": []}, "prompt"),
    ({"model": "tiny", "prompt": [1, 2, 99999]}, "prompt"),
    ({"model": "tiny", "prompt": "word " * 400}, "prompt"),
    ({"model": "tiny"}, "prompt"),
    ({"model": "tiny", "prompt": "hi", "top_p": 0}, "top_p"),
    ({"model": "tiny", "prompt": "hi", "n": 3, "best_of": 2}, "best_of"),
    ({"model": "tiny", "prompt": "hi", "n": 1, "best_of": 2, "stream": True}, "best_of"),
]


@pytest.mark.parametrize(("body", "field"), BAD_COMPLETIONS, ids=[f for _, f in BAD_COMPLETIONS])
def test_bad_completion_requests_name_the_field(server: ServerProcess, body: dict, field: str) -> None:
    response = post(server, "/v1/completions", json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert field in (error["param"] or "") or field in error["message"]


def test_unknown_model_is_404(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.chat.completions.create(model="gpt-7", messages=[{"role": "user", "content": "hi"}])


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"{not json", "not valid JSON"),
        (b'{"model": "tiny", "prompt": "\xff\xfe"}', ""),
        (b"[1, 2, 3]", ""),
    ],
    ids=["invalid-json", "invalid-utf8", "not-an-object"],
)
def test_malformed_bodies_are_400(server: ServerProcess, content: bytes, expected: str) -> None:
    response = post(server, "/v1/completions", content=content)
    assert response.status_code == 400, response.text
    assert expected in response.json()["error"]["message"]


def test_bad_chat_requests(server: ServerProcess) -> None:
    assert post(server, "/v1/chat/completions", json={"model": "tiny", "messages": []}).status_code == 400
    wrong_role = post(
        server, "/v1/chat/completions", json={"model": "tiny", "messages": [{"role": "wizard", "content": "x"}]}
    )
    assert wrong_role.status_code == 400 and "role" in wrong_role.json()["error"]["message"]
    no_logprobs = post(
        server,
        "/v1/chat/completions",
        json={"model": "tiny", "messages": [{"role": "user", "content": "x"}], "top_logprobs": 2},
    )
    assert no_logprobs.status_code == 400 and "top_logprobs" in no_logprobs.json()["error"]["message"]


def test_oversized_body_is_413(server: ServerProcess) -> None:
    response = post(
        server, "/v1/completions", content=b'{"model": "tiny", "prompt": "' + b"a" * (33 * 1024 * 1024) + b'"}'
    )
    assert response.status_code == 413
    assert "exceeds" in response.json()["error"]["message"]


def test_server_keeps_serving_after_bad_input(client: openai.OpenAI, server: ServerProcess) -> None:
    for body, _ in BAD_COMPLETIONS:
        post(server, "/v1/completions", json=body)
    out = client.completions.create(model="tiny", prompt=PROMPTS[0], max_tokens=3, **greedy())
    assert out.usage.completion_tokens == 3
    assert server.proc.poll() is None


def test_openapi_document_lists_every_endpoint_and_request_field(server: ServerProcess) -> None:
    from tpserve.entrypoints.openai_protocol import ChatCompletionRequest, CompletionRequest, TokenizeRequest

    document = httpx.get(f"{server.url}/openapi.json").json()
    paths = document["paths"]
    for path, method in [
        ("/v1/completions", "post"),
        ("/v1/chat/completions", "post"),
        ("/v1/models", "get"),
        ("/tokenize", "post"),
        ("/detokenize", "post"),
        ("/version", "get"),
        ("/health", "get"),
        ("/health_generate", "get"),
        ("/metrics", "get"),
    ]:
        assert method in paths.get(path, {}), f"{method.upper()} {path} missing from /openapi.json"
    schemas = document["components"]["schemas"]
    for model in (CompletionRequest, ChatCompletionRequest, TokenizeRequest):
        described = schemas[model.__name__]
        names = {field.alias or name for name, field in model.model_fields.items()}
        assert names <= set(described["properties"]), names - set(described["properties"])
        assert described.get("additionalProperties", True) is not False  # unknown fields are accepted
    chat = schemas["ChatCompletionRequest"]["properties"]
    assert {"tools", "tool_choice", "response_format", "guided_json", "chat_template_kwargs"} <= set(chat)

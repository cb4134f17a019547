"""Chunked prefill, continuous batching, sampling and request errors through the offline API."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tpserve import LLM, RequestError, SamplingParams

from .reference import hf_greedy
from .test_correctness import GREEDY, NEW_TOKENS, PROMPTS


@pytest.fixture(scope="module")
def chunked(tiny_checkpoint) -> Iterator[tuple[LLM, Path]]:
    """tp=2 with prefill chunks of 5 tokens and pages of 4: every long prompt spans chunks and pages."""
    path = tiny_checkpoint("llama")
    with LLM(str(path), tp=2, max_prefill_length=5, page_size=4) as llm:
        yield llm, path


def test_chunked_prefill_matches_transformers(chunked: tuple[LLM, Path]) -> None:
    llm, path = chunked
    outputs = llm.generate(PROMPTS, GREEDY)
    assert [o.token_ids for o in outputs] == [hf_greedy(path, p, NEW_TOKENS) for p in PROMPTS]
    assert llm.pages_used == 0


def test_requests_join_while_others_decode(chunked: tuple[LLM, Path]) -> None:
    llm, path = chunked
    long_params = SamplingParams(max_tokens=40, temperature=0, ignore_eos=True)
    [first] = llm.submit([PROMPTS[0]], long_params)
    while len(llm.progress(first).token_ids) < 3:
        llm.poll(1.0)
    later = llm.submit(PROMPTS[1:], GREEDY)
    # The early request is still decoding when the others are admitted.
    assert llm.progress(first).finish_reason is None
    done = llm.wait([first, *later], timeout_s=120)
    assert done[0].token_ids == hf_greedy(path, PROMPTS[0], 40)
    for prompt, out in zip(PROMPTS[1:], done[1:]):
        assert out.token_ids == hf_greedy(path, prompt, NEW_TOKENS)
    assert llm.pages_used == 0


def test_seeded_sampling_is_reproducible_within_any_batch(chunked: tuple[LLM, Path]) -> None:
    llm, _ = chunked
    seeded = SamplingParams(max_tokens=16, temperature=1.0, top_p=0.95, top_k=50, seed=1234, ignore_eos=True)
    alone = llm.generate([PROMPTS[0]], seeded)[0].token_ids
    unseeded = SamplingParams(max_tokens=16, temperature=1.0, ignore_eos=True)
    crowd = llm.generate([PROMPTS[2], PROMPTS[0], PROMPTS[1]], [unseeded, seeded, unseeded])
    assert crowd[1].token_ids == alone
    other_seed = llm.generate([PROMPTS[0]], SamplingParams(max_tokens=16, temperature=1.0, seed=99, ignore_eos=True))
    assert other_seed[0].token_ids != alone


def test_mixed_sampling_params_in_one_batch(chunked: tuple[LLM, Path]) -> None:
    llm, path = chunked
    params = [
        GREEDY,
        SamplingParams(max_tokens=NEW_TOKENS, temperature=0.8, top_k=1, ignore_eos=True),  # top_k 1 is greedy
        SamplingParams(max_tokens=NEW_TOKENS, temperature=5.0, top_p=1e-6, ignore_eos=True),  # top_p tiny: greedy
        SamplingParams(max_tokens=3, temperature=1.0, ignore_eos=True),
    ]
    outputs = llm.generate(PROMPTS, params)
    for i in range(3):
        assert outputs[i].token_ids == hf_greedy(path, PROMPTS[i], NEW_TOKENS)
    assert len(outputs[3].token_ids) == 3 and outputs[3].finish_reason == "length"


def test_stop_token_ids(chunked: tuple[LLM, Path]) -> None:
    llm, path = chunked
    expected = hf_greedy(path, PROMPTS[0], NEW_TOKENS)
    stop_at = expected[4]
    first_hit = expected.index(stop_at)
    out = llm.generate([PROMPTS[0]], SamplingParams(max_tokens=NEW_TOKENS, temperature=0, stop_token_ids=[stop_at]))[0]
    assert out.token_ids == expected[: first_hit + 1]
    assert out.finish_reason == "stop"


def test_bad_requests_are_rejected_and_engine_keeps_serving(chunked: tuple[LLM, Path]) -> None:
    llm, path = chunked
    with pytest.raises(RequestError, match="empty"):
        llm.generate([[]], GREEDY)
    too_long = list(range(5, 5 + llm.engine_info.max_model_len))
    with pytest.raises(RequestError, match="context length"):
        llm.generate([too_long], GREEDY)
    assert llm.generate([PROMPTS[1]], GREEDY)[0].token_ids == hf_greedy(path, PROMPTS[1], NEW_TOKENS)


def test_generation_stops_at_context_length(tiny_checkpoint) -> None:
    path = tiny_checkpoint("qwen3")
    with LLM(str(path), tp=1, context_length=24) as llm:
        out = llm.generate([PROMPTS[0]], SamplingParams(max_tokens=100, temperature=0, ignore_eos=True))[0]
    assert len(PROMPTS[0]) + len(out.token_ids) == 24
    assert out.finish_reason == "length"
    assert out.token_ids == hf_greedy(path, PROMPTS[0], 24 - len(PROMPTS[0]))


def test_preemption_under_a_small_cache_keeps_results_exact(tiny_checkpoint) -> None:
    """Six 40-token requests with room for about two: sequences are preempted and recomputed."""
    path = tiny_checkpoint("qwen2")
    prompts = [list(range(10 + i, 50 + i)) for i in range(6)]
    with LLM(str(path), tp=2, page_size=8, max_total_tokens=128) as llm:
        outputs = llm.generate(prompts, SamplingParams(max_tokens=20, temperature=0, ignore_eos=True))
        assert llm.pages_used == 0
    for prompt, out in zip(prompts, outputs):
        assert out.token_ids == hf_greedy(path, prompt, 20)

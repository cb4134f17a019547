"""Prompt log-probabilities (what log-likelihood scoring reads) equal transformers' log-softmax.

Computed in the prefill forward itself: the rows of the prompt's positions join the step's logits,
across chunk boundaries, at any tp, and also for a prompt whose prefix is in the radix cache (such a
request recomputes its prompt instead of reusing cached pages).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from tpserve import LLM, SamplingParams

from .reference import hf_model
from .test_correctness import PROMPTS

TOP = 3


def hf_prompt_logprobs(path: Path, prompt: list[int]) -> torch.Tensor:
    """[len(prompt) - 1, vocab]: row j predicts prompt token j + 1."""
    with torch.no_grad():
        logits = hf_model(path)(torch.tensor([prompt])).logits[0, :-1]
    return torch.log_softmax(logits.double(), dim=-1)


@pytest.fixture(scope="module", params=[1, 2], ids=["tp1", "tp2"])
def engine(request: pytest.FixtureRequest, tiny_checkpoint) -> Iterator[tuple[LLM, Path]]:
    path = tiny_checkpoint("llama")
    # Chunks of 8 and pages of 4: prompts span chunks, the radix cache shares full pages.
    with LLM(str(path), tp=request.param, page_size=4, max_prefill_length=8, dtype="float32") as llm:
        yield llm, path


def check_against_transformers(path: Path, prompt: list[int], entries: list) -> None:
    assert len(entries) == len(prompt)
    assert entries[0] is None, "the first prompt token has nothing before it"
    expected = hf_prompt_logprobs(path, prompt)
    for j in range(1, len(prompt)):
        row = expected[j - 1]
        assert entries[j].token_logprob == pytest.approx(float(row[prompt[j]]), abs=1e-4)
        top_values, top_ids = row.topk(TOP)
        assert [t for t, _ in entries[j].top] == top_ids.tolist()
        assert [v for _, v in entries[j].top] == pytest.approx(top_values.tolist(), abs=1e-4)


def test_prompt_logprobs_equal_transformers_across_chunks(engine: tuple[LLM, Path]) -> None:
    llm, path = engine
    params = SamplingParams(max_tokens=2, temperature=0, ignore_eos=True, prompt_logprobs=TOP)
    outputs = llm.generate(PROMPTS, params)
    for prompt, out in zip(PROMPTS, outputs):
        check_against_transformers(path, prompt, out.prompt_logprobs)
        assert len(out.token_ids) == 2
    assert llm.pages_used == 0


def test_a_cached_prefix_still_gets_every_prompt_logprob(engine: tuple[LLM, Path]) -> None:
    llm, path = engine
    prompt = PROMPTS[2]  # 40 tokens: ten full pages
    llm.generate([prompt], SamplingParams(max_tokens=1, temperature=0))  # now in the radix cache
    hits = llm.cache.prefix_hit_tokens
    out = llm.generate([prompt], SamplingParams(max_tokens=1, temperature=0, prompt_logprobs=TOP))[0]
    check_against_transformers(path, prompt, out.prompt_logprobs)
    assert llm.cache.prefix_hit_tokens == hits, "recomputed, not read from the cache"
    plain = llm.generate([prompt], SamplingParams(max_tokens=1, temperature=0))[0]
    assert plain.prompt_logprobs is None and llm.cache.prefix_hit_tokens > hits


def test_requests_without_prompt_logprobs_share_the_step(engine: tuple[LLM, Path]) -> None:
    llm, path = engine
    with_lp = SamplingParams(max_tokens=4, temperature=0, ignore_eos=True, prompt_logprobs=0)
    without = SamplingParams(max_tokens=4, temperature=0, ignore_eos=True)
    outputs = llm.generate(PROMPTS, [with_lp, without, with_lp, without])
    for prompt, out in zip(PROMPTS[::2], outputs[::2]):
        expected = hf_prompt_logprobs(path, prompt)
        assert [e.token_logprob for e in out.prompt_logprobs[1:]] == pytest.approx(
            [float(expected[j - 1][prompt[j]]) for j in range(1, len(prompt))], abs=1e-4
        )
        assert all(e.top == [] for e in out.prompt_logprobs[1:])
    assert [o.prompt_logprobs for o in outputs[1::2]] == [None, None]
    reference = llm.generate(PROMPTS, without)
    assert [o.token_ids for o in outputs] == [o.token_ids for o in reference], "sampling is unchanged"

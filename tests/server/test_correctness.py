"""The engine's output equals transformers' on the same checkpoint, at several tp sizes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from tpserve import LLM, SamplingParams

from .reference import hf_greedy, hf_next_token_logprobs

# Different lengths on purpose: one shorter than a page, several spanning pages.
PROMPTS = [
    [5, 6, 7, 8, 9, 10, 11, 12, 13],
    [20, 21],
    list(range(30, 70)),
    [100, 7, 250, 3, 99, 17, 42, 42, 42, 8, 301, 77, 5, 18, 19, 20, 21],
]
NEW_TOKENS = 12
GREEDY = SamplingParams(max_tokens=NEW_TOKENS, temperature=0, ignore_eos=True)

CASES = [(family, tp) for family in ("llama", "mistral", "qwen2", "qwen3") for tp in (1, 2)] + [("llama", 4)]


@pytest.fixture(scope="module", params=CASES, ids=[f"{f}-tp{tp}" for f, tp in CASES])
def engine(request: pytest.FixtureRequest, tiny_checkpoint) -> Iterator[tuple[LLM, Path]]:
    family, tp = request.param
    path = tiny_checkpoint(family)
    with LLM(str(path), tp=tp) as llm:
        yield llm, path


def test_greedy_batch_matches_transformers(engine: tuple[LLM, Path]) -> None:
    llm, path = engine
    outputs = llm.generate(PROMPTS, GREEDY)
    for prompt, out in zip(PROMPTS, outputs):
        assert out.token_ids == hf_greedy(path, prompt, NEW_TOKENS)
        assert out.finish_reason == "length"
    assert llm.pages_used == 0, "every KV page is returned when the batch ends"


def test_first_step_logits_match_transformers(engine: tuple[LLM, Path]) -> None:
    llm, path = engine
    vocab = llm.model_config.vocab_size
    params = SamplingParams(max_tokens=1, temperature=0, ignore_eos=True, logprobs=vocab)
    outputs = llm.generate(PROMPTS, params)
    for prompt, out in zip(PROMPTS, outputs):
        expected = hf_next_token_logprobs(path, prompt)
        ours = torch.zeros(vocab, dtype=torch.float64)
        ids, values = zip(*out.logprobs[0].top)
        ours[list(ids)] = torch.tensor(values, dtype=torch.float64)
        assert len(ids) == vocab
        torch.testing.assert_close(ours, expected, rtol=0, atol=2e-5)

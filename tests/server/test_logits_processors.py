"""Penalties, min_tokens, logit_bias and min_p do what their definitions say.

The batched tensor code is compared with a plain per-row, per-token reference written from the
definitions (vLLM's and SGLang's), on the same logits; then the engine's greedy output with a
repetition penalty is compared with transformers' (whose RepetitionPenaltyLogitsProcessor has the
same meaning), and logit_bias and min_tokens are checked end to end.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from tpserve import LLM, SamplingParams
from tpserve.engine.logits_processors import RowHistory, adjust_logits
from tpserve.engine.sampling import _drop_below_min_p

from .reference import hf_model
from .test_correctness import PROMPTS

EOS = (3,)
VOCAB = 40


def reference(logits: torch.Tensor, rows: list[RowHistory]) -> torch.Tensor:
    out = logits.clone().double()
    for i, row in enumerate(rows):
        p = row.params
        for token, bias in p.logit_bias:
            out[i, token] += bias
        if len(row.generated) < p.min_tokens:
            for token in set(p.stop_token_ids) | (set() if p.ignore_eos else set(EOS)):
                out[i, token] = float("-inf")
        for token in set(row.generated):
            count = row.generated.count(token)
            out[i, token] -= p.frequency_penalty * count + p.presence_penalty
        for token in set(row.prompt) | set(row.generated):
            value = out[i, token]
            out[i, token] = value / p.repetition_penalty if value > 0 else value * p.repetition_penalty
    return out


def random_rows(rng: random.Random, count: int) -> list[RowHistory]:
    rows = []
    for _ in range(count):
        params = SamplingParams(
            presence_penalty=rng.choice([0.0, 0.5, -1.0]),
            frequency_penalty=rng.choice([0.0, 0.3, 2.0]),
            repetition_penalty=rng.choice([1.0, 1.3, 0.7]),
            min_tokens=rng.choice([0, 2, 6]),
            stop_token_ids=tuple(rng.sample(range(VOCAB), rng.randint(0, 2))),
            ignore_eos=rng.random() < 0.3,
            logit_bias=tuple((rng.randrange(VOCAB), rng.uniform(-5, 5)) for _ in range(rng.randint(0, 3))),
        )
        prompt = [rng.randrange(VOCAB) for _ in range(rng.randint(1, 8))]
        generated = [rng.randrange(VOCAB) for _ in range(rng.randint(0, 10))]
        rows.append(RowHistory(params, prompt, generated))
    return rows


@pytest.mark.parametrize("seed", range(20))
def test_batched_adjustments_equal_the_definitions(seed: int) -> None:
    rng = random.Random(seed)
    rows = random_rows(rng, 7)
    logits = torch.randn(len(rows), VOCAB, generator=torch.Generator().manual_seed(seed))
    adjusted = adjust_logits(logits, rows, EOS)
    torch.testing.assert_close(adjusted.double(), reference(logits, rows), rtol=1e-6, atol=1e-6)


def test_rows_without_adjustments_are_returned_unchanged() -> None:
    logits = torch.randn(3, VOCAB)
    rows = [RowHistory(SamplingParams(), [1, 2], [4, 4]) for _ in range(3)]
    assert adjust_logits(logits, rows, EOS) is logits


def test_min_p_keeps_exactly_the_tokens_likely_enough() -> None:
    logits = torch.randn(4, VOCAB, generator=torch.Generator().manual_seed(1))
    params = [SamplingParams(min_p=m) for m in (0.0, 0.05, 0.3, 1.0)]
    kept = torch.isfinite(_drop_below_min_p(logits, params))
    probs = logits.softmax(dim=-1)
    for i, p in enumerate(params):
        expected = probs[i] >= p.min_p * probs[i].max()
        assert torch.equal(kept[i], expected)
    assert kept[3].sum() == 1, "min_p 1 leaves only the most likely token"


@pytest.fixture(scope="module")
def engine(tiny_checkpoint):  # type: ignore[no-untyped-def]
    path = tiny_checkpoint("llama")
    with LLM(str(path), tp=2, page_size=4, max_prefill_length=8, dtype="float32") as llm:
        yield llm, path


def test_repetition_penalty_matches_transformers(engine: tuple[LLM, Path]) -> None:
    llm, path = engine
    params = SamplingParams(max_tokens=12, temperature=0, ignore_eos=True, repetition_penalty=1.8)
    outputs = llm.generate(PROMPTS, params)
    for prompt, out in zip(PROMPTS, outputs):
        with torch.no_grad():
            expected = (
                hf_model(path)
                .generate(
                    torch.tensor([prompt]),
                    attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                    max_new_tokens=12,
                    do_sample=False,
                    repetition_penalty=1.8,
                    eos_token_id=None,
                    pad_token_id=0,
                )[0, len(prompt) :]
                .tolist()
            )
        assert out.token_ids == expected
    plain = llm.generate(PROMPTS, SamplingParams(max_tokens=12, temperature=0, ignore_eos=True))
    assert [o.token_ids for o in plain] != [o.token_ids for o in outputs], "the penalty changed something"


def test_logit_bias_and_min_tokens_end_to_end(engine: tuple[LLM, Path]) -> None:
    llm, _ = engine
    forced = llm.generate(PROMPTS[:2], SamplingParams(max_tokens=5, temperature=0.8, logit_bias=((17, 100.0),)))
    assert all(o.token_ids == [17] * 5 for o in forced)
    greedy = llm.generate([PROMPTS[0]], SamplingParams(max_tokens=8, temperature=0, ignore_eos=True))[0].token_ids
    stop = greedy[0]
    early = llm.generate([PROMPTS[0]], SamplingParams(max_tokens=8, temperature=0, stop_token_ids=(stop,)))[0]
    assert early.token_ids == [stop] and early.finish_reason == "stop"
    held = llm.generate(
        [PROMPTS[0]], SamplingParams(max_tokens=8, temperature=0, stop_token_ids=(stop,), min_tokens=3)
    )[0]
    assert len(held.token_ids) >= 3 and stop not in held.token_ids[:3]

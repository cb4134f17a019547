"""Overlap scheduling is exact: the same tokens as without it, stops and max_tokens to the token.

With overlap on (the default) rank 0 plans step N+1 before it reads step N's tokens back; a row
planned for a request that has meanwhile stopped is dropped, never reported. On CPU the steps
themselves run one after another, but the planning order, the placeholders and the dropped rows
are the same code as on a GPU.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tpserve import LLM, SamplingParams

from .reference import hf_greedy
from .test_correctness import PROMPTS


@pytest.fixture(scope="module", params=[False, True], ids=["overlap", "no-overlap"])
def engine(request: pytest.FixtureRequest, tiny_checkpoint) -> Iterator[tuple[LLM, Path]]:
    path = tiny_checkpoint("llama")
    with LLM(str(path), tp=2, page_size=4, max_prefill_length=8, disable_overlap_schedule=request.param) as llm:
        yield llm, path


def test_greedy_tokens_match_transformers_for_every_length(engine: tuple[LLM, Path]) -> None:
    llm, path = engine
    lengths = [1, 2, 5, 17]
    params = [SamplingParams(max_tokens=n, temperature=0, ignore_eos=True) for n in lengths]
    outputs = llm.generate(PROMPTS, params)
    for prompt, n, out in zip(PROMPTS, lengths, outputs):
        assert out.token_ids == hf_greedy(path, prompt, n), f"max_tokens={n}"
        assert out.finish_reason == "length"
    assert llm.pages_used == 0


def test_a_stop_token_ends_the_output_exactly_there(engine: tuple[LLM, Path]) -> None:
    llm, path = engine
    expected = [hf_greedy(path, prompt, 12) for prompt in PROMPTS]
    # Stop on the 4th greedy token: the stream's 5th token is already being sampled when the
    # 4th is read back (with overlap) and must not appear.
    stops = [tokens[3] for tokens in expected]
    params = [SamplingParams(max_tokens=12, temperature=0, stop_token_ids=(stop,)) for stop in stops]
    outputs = llm.generate(PROMPTS, params)
    for tokens, stop, out in zip(expected, stops, outputs):
        assert out.token_ids == tokens[: tokens.index(stop) + 1]
        assert out.finish_reason == "stop"
    assert llm.pages_used == 0


def test_aborts_while_steps_are_in_flight_free_their_pages(engine: tuple[LLM, Path]) -> None:
    llm, path = engine
    long = SamplingParams(max_tokens=60, temperature=0, ignore_eos=True)
    ids = llm.submit(PROMPTS, long)
    while len(llm.progress(ids[0]).token_ids) < 4:
        llm.poll(1.0)
    llm.abort([ids[0], ids[2]])
    done = llm.wait(ids, timeout_s=120)
    assert [o.finish_reason for o in done] == ["abort", "length", "abort", "length"]
    for prompt, out in zip(PROMPTS, done):
        # Whatever an aborted request got before its abort is its greedy prefix.
        assert out.token_ids == hf_greedy(path, prompt, 60)[: len(out.token_ids)]
    assert len(done[1].token_ids) == len(done[3].token_ids) == 60
    assert llm.pages_used == 0
    assert llm.generate([PROMPTS[1]], long)[0].token_ids == done[1].token_ids, "and the engine serves on"

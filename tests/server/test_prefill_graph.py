"""Prefill-graph plumbing on CPU: a single-sequence prefill replayed from its token bucket gives the
eager step's logits and writes exactly the eager step's K/V.

The recorder is `ReplayByRerun` (graph_replay.py). The GPU check of real graphs against eager
prefill is bench/check_cuda_graph.py.
"""

from __future__ import annotations

import random

import pytest
import torch

from tpserve.core.batch import ForwardBatch
from tpserve.core.errors import ConfigError
from tpserve.engine.config import EngineConfig
from tpserve.engine.prefill_graph import prefill_buckets
from tpserve.engine.runner import ModelRunner

from .graph_replay import ReplayByRerun, float64_cpu_runner

PAGE_SIZE = 4
MAX_TOKENS = 48


def test_buckets_double_from_16_up_to_the_maximum() -> None:
    assert prefill_buckets(0) == []
    assert prefill_buckets(8) == [8]
    assert prefill_buckets(16) == [16]
    assert prefill_buckets(100) == [16, 32, 64, 100]
    assert prefill_buckets(512) == [16, 32, 64, 128, 256, 512]


@pytest.fixture(scope="module")
def runner(tiny_checkpoint) -> ModelRunner:
    return float64_cpu_runner(str(tiny_checkpoint("llama")), PAGE_SIZE, context_length=96)


def _real_pages(runner: ModelRunner) -> list[torch.Tensor]:
    return [layer[: runner.kv_cache.padding_page].clone() for layer in runner.kv_cache.layers]


def test_replayed_prefill_equals_eager_prefill_for_every_length_and_cached_prefix(runner: ModelRunner) -> None:
    graphs = runner.prefill_graphs = runner.prefill_graphs_of(MAX_TOKENS, ReplayByRerun())
    assert graphs.buckets == [16, 32, 48]
    rng = random.Random(0)
    vocab = runner.model_config.vocab_size
    next_page = 0
    # (cached prefix, new tokens): a bucket's exact size, one token past it, short ones, the largest,
    # and chunks after a prefix already in the cache (a radix hit or an earlier chunk).
    for cached, new in [(0, 2), (0, 5), (0, 16), (0, 17), (0, 48), (7, 9), (12, 33), (40, 3)]:
        pages = list(range(next_page, next_page + 23))  # room for 92 tokens
        next_page = (next_page + 23) % 92
        prompt = [rng.randrange(vocab) for _ in range(cached + new)]
        if cached:
            runner.forward_eager(ForwardBatch.fresh(prompt[:cached], [cached], [cached], [pages], [False]))
        chunk = ForwardBatch.fresh(prompt[cached:], [new], [cached + new], [pages], [True])
        assert graphs.can_run(chunk), (cached, new)
        before = _real_pages(runner)
        replayed = runner.forward(chunk).clone()  # one sequence that fits a bucket: replayed
        after_replay = _real_pages(runner)
        eager = runner.forward_eager(chunk)
        assert replayed.shape == eager.shape == (1, vocab)
        torch.testing.assert_close(replayed, eager, rtol=1e-9, atol=1e-9)
        # The replay wrote the sequence's new K/V, as the eager step does, and no other real page:
        # the bucket's padding rows went to the padding page.
        for old, replay_pages, eager_pages in zip(before, after_replay, _real_pages(runner)):
            torch.testing.assert_close(replay_pages, eager_pages, rtol=1e-12, atol=1e-12)
            changed = (old != replay_pages).flatten(1).any(dim=1).nonzero().flatten().tolist()
            touched = sorted({pages[p // PAGE_SIZE] for p in range(cached, cached + new)})
            assert changed == touched, (cached, new)
    runner.prefill_graphs = None


def test_steps_a_prefill_graph_cannot_hold_stay_eager(runner: ModelRunner) -> None:
    graphs = runner.prefill_graphs_of(MAX_TOKENS, ReplayByRerun())
    fits = ForwardBatch.fresh([1, 2, 3], [3], [3], [[0]], [True])
    assert graphs.can_run(fits)
    two_sequences = ForwardBatch.fresh([1, 2, 3, 4], [2, 2], [2, 2], [[0], [1]], [True, True])
    too_long = ForwardBatch.fresh(
        list(range(MAX_TOKENS + 1)), [MAX_TOKENS + 1], [MAX_TOKENS + 1], [list(range(13))], [True]
    )
    decode = ForwardBatch.fresh([1], [1], [5], [[0, 1]], [True])
    middle_chunk = ForwardBatch.fresh([1, 2, 3], [3], [3], [[0]], [False])  # samples nothing
    prompt_logprobs = ForwardBatch.make([0], [[1, 2, 3]], [3], [[0]], [True], prompt_logits=[2])
    for batch in (two_sequences, too_long, decode, middle_chunk, prompt_logprobs):
        assert not graphs.can_run(batch)


def test_the_prefill_graph_limit_reaches_the_engine_config(tiny_checkpoint) -> None:
    from tpserve.entrypoints.cli import server_args

    model = str(tiny_checkpoint("llama"))
    args = server_args(["--model", model, "--device", "cpu", "--cuda-graph-max-prefill-tokens", "256"])
    assert args.engine.cuda_graph_max_prefill_tokens == 256
    assert server_args(["--model", model, "--device", "cpu"]).engine.cuda_graph_max_prefill_tokens == 0
    with pytest.raises(ConfigError, match="--cuda-graph-max-prefill-tokens"):
        EngineConfig(model_path=model, cuda_graph_max_prefill_tokens=-1).validate()

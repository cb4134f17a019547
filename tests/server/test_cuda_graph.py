"""Decode-graph plumbing on CPU: padding, static inputs and replay give the eager step's logits.

The recorder is `ReplayByRerun` (graph_replay.py): it replays by rerunning the recorded step on
the same static buffers. The GPU check of real graphs against eager decode is
bench/check_cuda_graph.py.
"""

from __future__ import annotations

import itertools
import random

import pytest
import torch

from tpserve.core.batch import ForwardBatch
from tpserve.distributed.group import TPGroup
from tpserve.engine.config import EngineConfig
from tpserve.engine.cuda_graph import graph_batch_sizes, pad_decode_batch
from tpserve.engine.runner import ModelRunner
from tpserve.kvcache.paged_cache import KVCacheShape, PagedKVCache
from tpserve.kvcache.request_tables import RequestTables

from .graph_replay import ReplayByRerun, float64_cpu_runner

PAGE_SIZE = 4


def test_captured_sizes_cover_every_batch_up_to_the_maximum() -> None:
    assert graph_batch_sizes(1) == [1]
    assert graph_batch_sizes(6) == [1, 2, 4, 6]
    sizes = graph_batch_sizes(256)
    assert sizes[:5] == [1, 2, 4, 8, 16] and sizes[-1] == 256 and all(b - a <= 8 for a, b in itertools.pairwise(sizes))


def test_padding_rows_only_touch_the_padding_page() -> None:
    tables = RequestTables(max_rows=4, max_pages_per_row=3, padding_page=7, device=torch.device("cpu"))
    batch = ForwardBatch.fresh(
        [5, 6], query_lens=[1, 1], context_lens=[3, 9], page_tables=[[0], [1, 2, 3]], sample=[True, True]
    )
    tables.apply(batch)
    padded = pad_decode_batch(batch, 5, padding_row=tables.padding_row)
    assert padded.num_seqs == 5 and padded.is_decode_only
    cache = PagedKVCache(KVCacheShape(1, 7, PAGE_SIZE, 1, 2), torch.float32, torch.device("cpu"))
    slots = tables.slots(cache, torch.from_numpy(padded.rows), torch.from_numpy(padded.positions()))
    pages, offsets = slots[:, 0] // (2 * PAGE_SIZE), slots[:, 0] % (2 * PAGE_SIZE)
    assert pages.tolist() == [0, 3, 7, 7, 7] and offsets.tolist() == [2, 0, 0, 0, 0]
    with pytest.raises(ValueError, match="does not fit"):
        pad_decode_batch(padded, 4, padding_row=tables.padding_row)


@pytest.fixture(scope="module")
def runner(tiny_checkpoint) -> ModelRunner:
    return float64_cpu_runner(str(tiny_checkpoint("llama")), PAGE_SIZE, context_length=64)


def _prefilled(runner: ModelRunner, rng: random.Random, count: int) -> tuple[list[list[int]], list[list[int]]]:
    """`count` sequences with random prompts in the cache; returns (token ids, page tables)."""
    tokens, tables, next_page = [], [], 0
    for _ in range(count):
        prompt = [rng.randrange(runner.model_config.vocab_size) for _ in range(rng.randint(2, 13))]
        pages = list(range(next_page, next_page + 5))  # room for 20 tokens
        next_page += 5
        runner.forward(ForwardBatch.fresh(prompt, [len(prompt)], [len(prompt)], [pages], [True]))
        tokens.append(prompt)
        tables.append(pages)
    return tokens, tables


def test_replayed_decode_equals_eager_decode_at_every_batch_size(runner: ModelRunner) -> None:
    recorder = ReplayByRerun()

    # flashinfer's RoPE kernel refuses strided positions: the graph's static inputs must reach
    # the model as contiguous tensors.
    def contiguous_positions(module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        assert args[0].is_contiguous(), "the model got strided positions"

    hook = runner.model.rotary.register_forward_pre_hook(contiguous_positions)
    # The runner's own graphs, as it captures them on a GPU: they must read the page tables its
    # `forward` updates (a graph over other tables decodes from the padding page).
    runner.graphs = graphs = runner.decode_graphs(6, recorder)
    assert recorder.recorded == [6, 4, 2, 1]  # largest first, so smaller graphs share its pool
    rng = random.Random(0)
    for batch_size in (1, 3, 5, 6, 2):
        tokens, tables = _prefilled(runner, rng, batch_size)
        decode = ForwardBatch.fresh(
            token_ids=[rng.randrange(runner.model_config.vocab_size) for _ in tokens],
            query_lens=[1] * batch_size,
            context_lens=[len(t) + 1 for t in tokens],
            page_tables=tables,
            sample=[True] * batch_size,
        )
        assert graphs.can_run(decode)
        cache_before = [layer[: runner.kv_cache.padding_page].clone() for layer in runner.kv_cache.layers]
        replayed = runner.forward(decode).clone()  # decode-only and fits: replayed
        cache_after_replay = [layer[: runner.kv_cache.padding_page].clone() for layer in runner.kv_cache.layers]
        eager = runner.forward_eager(decode)
        assert replayed.shape == eager.shape == (batch_size, runner.model_config.vocab_size)
        torch.testing.assert_close(replayed, eager, rtol=1e-9, atol=1e-9)
        # The replay wrote exactly the real rows' new K/V (float64: padding changes only summation order).
        for before, after, layer in zip(cache_before, cache_after_replay, runner.kv_cache.layers):
            torch.testing.assert_close(after, layer[: runner.kv_cache.padding_page], rtol=1e-12, atol=1e-12)
            assert not torch.equal(before, after)
    hook.remove()
    runner.graphs = None


def test_prefill_and_oversized_batches_stay_eager(runner: ModelRunner) -> None:
    graphs = runner.decode_graphs(2, ReplayByRerun())
    prefill = ForwardBatch.fresh([1, 2, 3], [3], [3], [[0]], [True])
    too_many = ForwardBatch.fresh([1, 2, 3], [1, 1, 1], [2, 2, 2], [[0], [1], [2]], [True] * 3)
    assert not graphs.can_run(prefill) and not graphs.can_run(too_many)


def test_cuda_graph_flags_reach_the_engine_config(tiny_checkpoint) -> None:
    from tpserve.entrypoints.cli import server_args

    model = str(tiny_checkpoint("llama"))
    args = server_args(
        [
            "--model",
            model,
            "--device",
            "cpu",
            "--cuda-graph-max-bs",
            "32",
            "--disable-custom-all-reduce",
            "--enable-p2p-check",
        ]
    )
    assert (
        args.engine.cuda_graph_max_bs == 32 and args.engine.disable_custom_all_reduce and args.engine.enable_p2p_check
    )
    assert not args.engine.use_cuda_graph  # graphs are a CUDA feature
    assert not server_args(["--model", model, "--device", "cpu", "--disable-cuda-graph"]).engine.use_cuda_graph
    assert EngineConfig(model_path=model, device="cuda").use_cuda_graph
    assert not EngineConfig(model_path=model, device="cuda", disable_cuda_graph=True).use_cuda_graph


def test_custom_all_reduce_is_refused_where_it_cannot_run() -> None:
    from tpserve.distributed.all_reduce import CustomAllReduceRequest, custom_all_reduce_refusal

    def refusal(**changes: object) -> str | None:
        fields = dict(device_kind="cuda", world_size=2, nnodes=1, dtype=torch.bfloat16, disabled=False, p2p_check=False)
        return custom_all_reduce_refusal(CustomAllReduceRequest(**(fields | changes)))  # type: ignore[arg-type]

    assert refusal() is None
    assert refusal(disabled=True) == "--disable-custom-all-reduce"
    assert "tp=1" in (refusal(world_size=1) or "")
    assert "CUDA" in (refusal(device_kind="cpu") or "")
    assert "nodes" in (refusal(nnodes=2) or "")
    assert "float16" in (refusal(dtype=torch.float16) or "")


def test_small_all_reduce_fast_path_is_taken_only_for_what_it_accepts() -> None:
    class Recorder:
        def __init__(self) -> None:
            self.calls = 0

        def accepts(self, tensor: torch.Tensor) -> bool:
            return tensor.numel() <= 4

        def __call__(self, tensor: torch.Tensor) -> torch.Tensor:
            self.calls += 1
            return tensor * 2

    group = TPGroup(rank=0, world_size=2, device=torch.device("cpu"), small_all_reduce=Recorder())
    assert torch.equal(group.all_reduce(torch.ones(4)), torch.full((4,), 2.0))
    assert group.small_all_reduce.calls == 1
    single = TPGroup(rank=0, world_size=1, device=torch.device("cpu"), small_all_reduce=Recorder())
    assert torch.equal(single.all_reduce(torch.ones(4)), torch.ones(4)) and single.small_all_reduce.calls == 0


def test_reference_ops_switch_fused_kernels_off_only_inside_the_block(runner: ModelRunner) -> None:
    from tpserve.layers.kernels import reference_ops

    norm = runner.model.layers[0].input_layernorm
    marker = object()
    norm.kernels = marker  # as on CUDA with flashinfer
    try:
        with reference_ops(runner.model):
            assert norm.kernels is None
        assert norm.kernels is marker
    finally:
        norm.kernels = None

"""Decode steps replayed from CUDA graphs, one graph per captured batch size.

An eager decode step of an 8B model launches ~500 small kernels from Python; at batch 1 the GPU
waits on the host most of the time. A graph replays the whole step with one launch. Graphs fix
shapes and addresses, so:
- batch sizes are captured at startup for 1, 2, 4, 8, 16, 24, ... up to --cuda-graph-max-bs, and
  a step runs on the smallest captured size that fits, padded with rows that read and write only
  the KV cache's padding page;
- every input lives in one static buffer (token ids, positions, then each token's K and V slot)
  that is filled with one host-to-device copy per step, and the attention backend keeps its page
  metadata in static buffers too (`plan_graph_decode`);
- all graphs share one memory pool, captured largest first, so they cost about one step's
  activations (accounted before the KV cache is sized: see runner.py).
Every rank captures the same sizes in the same order, so collectives inside the graphs match.
"""

from __future__ import annotations

import bisect
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch

from ..attention import AttentionBackend
from ..core.batch import ForwardBatch
from ..models.decoder import DecoderModel

log = logging.getLogger(__name__)

StepFn = Callable[[], torch.Tensor]


def graph_batch_sizes(max_bs: int) -> list[int]:
    """Captured sizes: fine steps where decode batches usually are, every 8 above."""
    sizes = {1, 2, 4, max_bs} | set(range(8, max_bs + 1, 8))
    return sorted(s for s in sizes if s <= max_bs)


def pad_decode_batch(batch: ForwardBatch, size: int, padding_page: int) -> ForwardBatch:
    """`batch` plus rows up to `size` that attend over one token of the padding page."""
    extra = size - batch.num_seqs
    if extra < 0:
        raise ValueError(f"batch of {batch.num_seqs} does not fit a graph of {size}")
    return ForwardBatch(
        token_ids=batch.token_ids + [0] * extra,
        query_lens=batch.query_lens + [1] * extra,
        context_lens=batch.context_lens + [1] * extra,
        page_tables=batch.page_tables + [[padding_page]] * extra,
        sample=batch.sample + [True] * extra,
    )


class Replayable(Protocol):
    def replay(self) -> None: ...


class GraphCapture(Protocol):
    def capture(self, step: StepFn) -> tuple[Replayable, torch.Tensor]:
        """Record `step`; returns what replays it and the tensor each replay writes its result to."""
        ...


class CudaGraphCapture:
    """torch.cuda graphs sharing one memory pool, recorded on a side stream."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.pool = torch.cuda.graph_pool_handle()
        self.stream = torch.cuda.Stream(device)

    def capture(self, step: StepFn) -> tuple[Replayable, torch.Tensor]:
        # Warm up outside capture: lazy initialisation (cuBLAS handles, NCCL) must not be recorded.
        self.stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self.stream):
            step()
        torch.cuda.current_stream(self.device).wait_stream(self.stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool, stream=self.stream):
            output = step()
        return graph, output


@dataclass
class _CapturedSize:
    graph: Replayable
    logits: torch.Tensor  # [size, vocab], rewritten by every replay


class DecodeGraphs:
    """Captures decode steps at startup and replays them for decode-only batches that fit."""

    def __init__(
        self,
        model: DecoderModel,
        attention: AttentionBackend,
        device: torch.device,
        max_bs: int,
        capture: GraphCapture,
    ) -> None:
        self.model = model
        self.attention = attention
        self.cache = attention.cache  # the graphs read and write this cache's tensors
        self.sizes = graph_batch_sizes(max_bs)
        self.max_bs = self.sizes[-1]
        # [token ids (max_bs) | positions (max_bs) | K/V slot rows (max_bs x 2)]: a step of n
        # sequences fills the first 2 * max_bs + 2 * n entries with one copy.
        self.inputs = torch.zeros(4 * self.max_bs, dtype=torch.int64, device=device)
        self.token_ids = self.inputs[: self.max_bs]
        self.positions = self.inputs[self.max_bs : 2 * self.max_bs]
        self.slots = self.inputs[2 * self.max_bs :].view(self.max_bs, 2)
        self.sample_indices = torch.arange(self.max_bs, dtype=torch.int64, device=device)
        self.captured: dict[int, _CapturedSize] = {}
        for size in reversed(self.sizes):  # largest first: smaller graphs reuse its pool blocks
            self._stage(pad_decode_batch(_empty_batch(), size, self.cache.padding_page))
            graph, logits = capture.capture(self._step_fn(size))
            self.captured[size] = _CapturedSize(graph, logits)

    def can_run(self, batch: ForwardBatch) -> bool:
        return batch.is_decode_only and 0 < batch.num_seqs <= self.max_bs

    def run(self, batch: ForwardBatch) -> torch.Tensor:
        """Logits of the sampled rows; valid until the next step."""
        size = self.sizes[bisect.bisect_left(self.sizes, batch.num_seqs)]
        self._stage(pad_decode_batch(batch, size, self.cache.padding_page))
        captured = self.captured[size]
        captured.graph.replay()
        logits = captured.logits[: batch.num_seqs]
        if all(batch.sample):
            return logits
        return logits[torch.tensor([i for i, s in enumerate(batch.sample) if s], device=logits.device)]

    def _stage(self, padded: ForwardBatch) -> None:
        """Copy a padded batch into the static inputs and plan attention over them."""
        size, gap = padded.num_seqs, [0] * (self.max_bs - padded.num_seqs)
        slots = self.cache.slot_rows(*padded.kv_write_slots(self.cache.shape.page_size))
        host = torch.tensor(padded.token_ids + gap + padded.positions() + gap + slots, dtype=torch.int64)
        self.inputs[: len(host)].copy_(host, non_blocking=True)
        self.attention.plan_graph_decode(padded, self.slots[:size])

    def _step_fn(self, size: int) -> StepFn:
        def step() -> torch.Tensor:
            logits: torch.Tensor = self.model(
                self.token_ids[:size], self.positions[:size], self.sample_indices[:size], self.attention
            )
            return logits

        return step


def _empty_batch() -> ForwardBatch:
    return ForwardBatch(token_ids=[], query_lens=[], context_lens=[], page_tables=[], sample=[])

"""Decode steps replayed from CUDA graphs, one graph per captured batch size.

An eager decode step of an 8B model launches ~500 small kernels from Python; at batch 1 the GPU
waits on the host most of the time. A graph replays the whole step with one launch. Graphs fix
shapes and addresses, so:
- batch sizes are captured at startup for 1, 2, 4, 8, 16, 24, ... up to --cuda-graph-max-bs, and
  a step runs on the smallest captured size that fits, padded with the request tables' padding
  row, whose pages are all the KV cache's padding page;
- a step's host inputs (token or FROM_DEVICE, position, request row, page count per row) go into
  one static [4, max_bs] buffer with one host-to-device copy; inside the graph the input tokens
  are gathered from the rows' last sampled tokens and the K/V slots from their page tables, so
  a decode step never waits for the previous step's tokens on the host;
- the attention backend keeps its page metadata in static buffers too (`plan_graph_decode`);
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

import numpy as np
import torch

from ..attention import AttentionBackend
from ..core.batch import ForwardBatch, StepInputs
from ..kvcache.request_tables import RequestTables, host_tensor
from ..models.decoder import DecoderModel

log = logging.getLogger(__name__)

StepFn = Callable[[], torch.Tensor]


def graph_batch_sizes(max_bs: int) -> list[int]:
    """Captured sizes: fine steps where decode batches usually are, every 8 above."""
    sizes = {1, 2, 4, max_bs} | set(range(8, max_bs + 1, 8))
    return sorted(s for s in sizes if s <= max_bs)


def pad_decode_batch(batch: ForwardBatch, size: int, padding_row: int) -> ForwardBatch:
    """`batch` plus rows up to `size` that attend over one token of the padding row's page."""
    extra = size - batch.num_seqs
    if extra < 0:
        raise ValueError(f"batch of {batch.num_seqs} does not fit a graph of {size}")
    ones = np.ones(extra, dtype=np.int64)
    return ForwardBatch(
        rows=np.concatenate([batch.rows, ones * padding_row]),
        token_ids=np.concatenate([batch.token_ids, ones * 0]),
        query_lens=np.concatenate([batch.query_lens, ones]),
        context_lens=np.concatenate([batch.context_lens, ones]),
        sample=np.concatenate([batch.sample, np.ones(extra, dtype=np.bool_)]),
        page_updates=batch.page_updates,
        prompt_logits=np.concatenate([batch.prompt_logits, ones * 0]),
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
class CapturedGraph:
    graph: Replayable
    logits: torch.Tensor  # the step's output, rewritten by every replay


def capture_largest_first(
    sizes: list[int], capture: GraphCapture, staged_step: Callable[[int], StepFn]
) -> dict[int, CapturedGraph]:
    """One graph per size, the largest recorded first so that smaller ones reuse its pool blocks.

    `staged_step(size)` stages that size's inputs (and plans attention) and returns the step.
    """
    captured = {}
    for size in sorted(sizes, reverse=True):
        graph, logits = capture.capture(staged_step(size))
        captured[size] = CapturedGraph(graph, logits)
    return captured


class DecodeGraphs:
    """Captures decode steps at startup and replays them for decode-only batches that fit."""

    def __init__(
        self,
        model: DecoderModel,
        attention: AttentionBackend,
        tables: RequestTables,
        max_bs: int,
        capture: GraphCapture,
    ) -> None:
        self.model = model
        self.attention = attention
        self.tables = tables
        self.cache = attention.cache  # the graphs read and write this cache's tensors
        self.sizes = graph_batch_sizes(max_bs)
        self.max_bs = self.sizes[-1]
        device = tables.device
        # Rows of [max_bs]: token (or FROM_DEVICE), position, request row, pages of context.
        # Each a contiguous row: kernels such as flashinfer's RoPE want contiguous positions.
        self.inputs = torch.zeros(4, self.max_bs, dtype=torch.int64, device=device)
        self.slots = torch.zeros(self.max_bs, 2, dtype=torch.int64, device=device)
        self.sample_indices = torch.arange(self.max_bs, dtype=torch.int64, device=device)
        self.captured = capture_largest_first(self.sizes, capture, self._staged_padding_step)

    def can_run(self, batch: ForwardBatch) -> bool:
        return batch.is_decode_only and 0 < batch.num_seqs <= self.max_bs

    def run(self, batch: ForwardBatch) -> torch.Tensor:
        """Logits of the sampled rows; valid until the next step."""
        size = self.sizes[bisect.bisect_left(self.sizes, batch.num_seqs)]
        self._stage(pad_decode_batch(batch, size, self.tables.padding_row))
        captured = self.captured[size]
        captured.graph.replay()
        logits = captured.logits[: batch.num_seqs]
        if batch.sample.all() and not batch.num_prompt_logits:
            return logits
        # One token per row: a row's token index is its row index.
        return logits[torch.from_numpy(batch.logit_token_indices()).to(logits.device)]

    def _staged_padding_step(self, size: int) -> StepFn:
        """The step of `size` rows, staged with padding rows only (what a graph is recorded with)."""
        self._stage(pad_decode_batch(_empty_batch(), size, self.tables.padding_row))
        return self._step_fn(size)

    def _stage(self, padded: ForwardBatch) -> None:
        """Copy a padded batch into the static inputs and plan attention over them."""
        size, page_size = padded.num_seqs, self.cache.shape.page_size
        pages_per_row = -(-padded.context_lens // page_size)
        host = np.zeros((4, self.max_bs), dtype=np.int64)  # the whole buffer: one contiguous copy
        host[:, :size] = (padded.token_ids, padded.positions(), padded.rows, pages_per_row)
        self.inputs.copy_(host_tensor(host, self.inputs.device), non_blocking=True)
        kv_indptr = np.zeros(size + 1, dtype=np.int64)
        np.cumsum(pages_per_row, out=kv_indptr[1:])
        rows, pages = self.inputs[2, :size], self.inputs[3, :size]
        self.attention.plan_graph_decode(
            StepInputs(
                plan=padded,
                token_ids=self.inputs[0, :size],
                positions=self.inputs[1, :size],
                slots=self.slots[:size],
                sample_indices=self.sample_indices[:size],
                kv_indices=self.tables.kv_indices(rows, pages, int(kv_indptr[-1])),
                kv_indptr=kv_indptr,
                kv_last_page_len=padded.context_lens - (pages_per_row - 1) * page_size,
                qo_indptr=np.arange(size + 1, dtype=np.int64),
            )
        )

    def _step_fn(self, size: int) -> StepFn:
        def step() -> torch.Tensor:
            host_tokens, positions, rows = self.inputs[0, :size], self.inputs[1, :size], self.inputs[2, :size]
            self.slots[:size].copy_(self.tables.slots(self.cache, rows, positions))
            tokens = self.tables.input_tokens(host_tokens, rows)
            logits: torch.Tensor = self.model(tokens, positions, self.sample_indices[:size], self.attention)
            return logits

        return step


def _empty_batch() -> ForwardBatch:
    return ForwardBatch.make([], [], [], [], [])

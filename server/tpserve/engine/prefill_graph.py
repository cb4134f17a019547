"""Short prefill steps of one sequence replayed from CUDA graphs, one graph per token bucket.

An eager prefill step launches every kernel from Python (~10 per layer, ~330 at the Llama-3.1-8B
shape). At a short prompt the GPU finishes each kernel before the host launches the next, so the
step costs the host's launch time rather than the GPU's (2026-12-04: the first token of a 16-token
prompt took 19.3 ms against Mini-SGLang's 13.0 while the prefill's GPU work is ~3.5 ms). A graph
replays the step with one launch. Graphs fix shapes and addresses, so:
- token counts are captured at startup for 16, 32, 64, ... up to --cuda-graph-max-prefill-tokens;
  a step with one sequence and at most that many new tokens runs on the smallest bucket that fits;
- the bucket's rows beyond the sequence's tokens are padding: they sit at position 0 of the
  request tables' padding row, so their K/V land in the padding page; attention is planned for
  the real tokens only, and every other kernel works row by row, so padding never reaches a
  real row (its own rows' values are never read);
- a step's host inputs (tokens, positions, rows, the sequence's row and page count, the index of
  its last token) go into one static buffer with one host-to-device copy;
- the attention backend plans into static buffers of its own (`plan_graph_prefill`);
- the graphs share the decode graphs' memory pool and are captured after them, largest first.
Every rank captures the same buckets in the same order, so collectives inside the graphs match.
"""

from __future__ import annotations

import bisect

import numpy as np
import torch

from ..attention import AttentionBackend
from ..core.batch import ForwardBatch, StepInputs
from ..kvcache.request_tables import RequestTables, host_tensor
from ..models.decoder import DecoderModel
from .cuda_graph import GraphCapture, StepFn, capture_largest_first

SMALLEST_BUCKET = 16


def prefill_buckets(max_tokens: int) -> list[int]:
    """Captured token counts: powers of two from 16, and `max_tokens` itself."""
    if max_tokens < 1:
        return []
    buckets = {max_tokens}
    size = SMALLEST_BUCKET
    while size < max_tokens:
        buckets.add(size)
        size *= 2
    return sorted(buckets)


class PrefillGraphs:
    """Captures single-sequence prefill steps at startup and replays the ones that fit."""

    def __init__(
        self,
        model: DecoderModel,
        attention: AttentionBackend,
        tables: RequestTables,
        max_tokens: int,
        capture: GraphCapture,
    ) -> None:
        self.model = model
        self.attention = attention
        self.tables = tables
        self.cache = attention.cache  # the graphs read and write this cache's tensors
        self.buckets = prefill_buckets(max_tokens)
        self.max_tokens = self.buckets[-1]
        device = tables.device
        width = self.max_tokens
        # One flat buffer, one copy per step: tokens (or FROM_DEVICE), positions and request rows
        # of every token, then the sequence's row, its page count and its last token's index.
        self.inputs = torch.zeros(3 * width + 3, dtype=torch.int64, device=device)
        self.token_ids, self.positions, self.token_rows = self.inputs[: 3 * width].view(3, width)
        self.seq_row, self.seq_pages, self.sample_index = (
            self.inputs[3 * width : 3 * width + 1],
            self.inputs[3 * width + 1 : 3 * width + 2],
            self.inputs[3 * width + 2 :],
        )
        self.slots = torch.zeros(width, 2, dtype=torch.int64, device=device)
        self.captured = capture_largest_first(self.buckets, capture, self._staged_padding_step)

    def can_run(self, batch: ForwardBatch) -> bool:
        """One sequence prefilling at most `max_tokens` tokens, sampling only its last one."""
        return (
            batch.num_seqs == 1
            and not batch.is_decode_only
            and batch.num_tokens <= self.max_tokens
            and bool(batch.sample[0])
            and not batch.num_prompt_logits
        )

    def run(self, batch: ForwardBatch) -> torch.Tensor:
        """Logits [1, vocab] of the sequence's last token; valid until the next step."""
        bucket = self.buckets[bisect.bisect_left(self.buckets, batch.num_tokens)]
        self._stage(batch, bucket)
        captured = self.captured[bucket]
        captured.graph.replay()
        return captured.logits

    def _staged_padding_step(self, bucket: int) -> StepFn:
        """The step of `bucket` rows, staged with the padding row's tokens (what a graph is recorded with)."""
        self._stage(_padding_prefill(self.tables.padding_row, bucket), bucket)
        return self._step_fn(bucket)

    def _stage(self, batch: ForwardBatch, bucket: int) -> None:
        """Copy the batch into the static inputs, padded to `bucket` rows, and plan attention."""
        tokens, width, page_size = batch.num_tokens, self.max_tokens, self.cache.shape.page_size
        pages = -(-int(batch.context_lens[0]) // page_size)
        host = np.zeros(3 * width + 3, dtype=np.int64)
        host[:tokens] = batch.token_ids
        host[width : width + tokens] = batch.positions()
        host[2 * width : 2 * width + tokens] = batch.rows[0]
        host[2 * width + tokens : 3 * width] = self.tables.padding_row  # padding rows, position 0
        host[3 * width :] = (batch.rows[0], pages, tokens - 1)
        self.inputs.copy_(host_tensor(host, self.inputs.device), non_blocking=True)
        self.attention.plan_graph_prefill(
            StepInputs(
                plan=batch,
                token_ids=self.token_ids[:bucket],
                positions=self.positions[:bucket],
                slots=self.slots[:bucket],
                sample_indices=self.sample_index,
                kv_indices=self.tables.kv_indices(self.seq_row, self.seq_pages, pages),
                kv_indptr=np.array([0, pages], dtype=np.int64),
                kv_last_page_len=batch.context_lens - (pages - 1) * page_size,
                qo_indptr=np.array([0, tokens], dtype=np.int64),
            ),
            bucket,
        )

    def _step_fn(self, bucket: int) -> StepFn:
        def step() -> torch.Tensor:
            positions, rows = self.positions[:bucket], self.token_rows[:bucket]
            self.slots[:bucket].copy_(self.tables.slots(self.cache, rows, positions))
            tokens = self.tables.input_tokens(self.token_ids[:bucket], rows)
            logits: torch.Tensor = self.model(tokens, positions, self.sample_index, self.attention)
            return logits

        return step


def _padding_prefill(padding_row: int, tokens: int) -> ForwardBatch:
    """A whole bucket of the padding row's tokens: what the graphs are recorded with."""
    return ForwardBatch(
        rows=np.array([padding_row], dtype=np.int64),
        token_ids=np.zeros(tokens, dtype=np.int64),
        query_lens=np.array([tokens], dtype=np.int64),
        context_lens=np.array([tokens], dtype=np.int64),
        sample=np.ones(1, dtype=np.bool_),
    )

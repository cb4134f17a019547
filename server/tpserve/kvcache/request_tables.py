"""Per-rank persistent request tables on the device: page ids per request row, last sampled token.

Rank 0's scheduler gives every running request a row. Each step's plan carries only the page
ids that changed (`PageUpdates`), which every rank writes into its own device page table; the
per-step metadata (positions, K/V slots, attention page lists) is then gathered from that table
on the device instead of being rebuilt from whole Python page tables each step. The token each
row's last step sampled stays on the device too, so a decode step reads its input there and can
be planned and launched before the previous step's tokens have reached the host.

The last row (`padding_row`) only pads batches up to a captured CUDA-graph size: its pages are
all the cache's padding page, which no request ever holds.
"""

from __future__ import annotations

import numpy as np
import torch

from ..core.batch import FROM_DEVICE, ForwardBatch, IntArray, StepInputs
from .paged_cache import PagedKVCache


class RequestTables:
    def __init__(self, max_rows: int, max_pages_per_row: int, padding_page: int, device: torch.device) -> None:
        self.device = device
        self.padding_row = max_rows
        self.max_pages_per_row = max_pages_per_row
        # int32: flashinfer reads page lists as int32, so gathered lists need no conversion.
        self.page_table = torch.full((max_rows + 1, max_pages_per_row), padding_page, dtype=torch.int32, device=device)
        self.last_tokens = torch.zeros(max_rows + 1, dtype=torch.int64, device=device)

    def reset(self, padding_page: int) -> None:
        """Forget every row, in place (captured graphs keep reading these same tensors)."""
        self.page_table.fill_(padding_page)
        self.last_tokens.zero_()

    def apply(self, plan: ForwardBatch) -> None:
        """Write the plan's page-table changes (one copy and one indexed store)."""
        updates = plan.page_updates
        if len(updates) == 0:
            return
        packed = to_device(np.concatenate([updates.rows, updates.cols, updates.pages]), self.device)
        rows, cols, pages = packed.view(3, -1)
        self.page_table[rows, cols] = pages.to(torch.int32)

    def record_samples(self, rows: torch.Tensor, tokens: torch.Tensor) -> None:
        """Remember each row's newest sampled token: its next decode step reads it here."""
        self.last_tokens[rows] = tokens

    def slots(self, cache: PagedKVCache, rows: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """[tokens, 2]: where each token's K and V go in `cache` (its page from the row's table)."""
        page_size = cache.shape.page_size
        pages = self.page_table[rows, torch.div(positions, page_size, rounding_mode="floor")]
        return cache.slots(pages.long(), positions % page_size)

    def input_tokens(self, host_tokens: torch.Tensor, token_rows: torch.Tensor) -> torch.Tensor:
        """The plan's tokens with FROM_DEVICE entries replaced by the row's last sampled token."""
        return torch.where(host_tokens == FROM_DEVICE, self.last_tokens[token_rows], host_tokens)

    def kv_indices(self, rows: torch.Tensor, pages_per_row: torch.Tensor, total: int) -> torch.Tensor:
        """Every row's first `pages_per_row` page ids, concatenated (no host sync: `total` is known)."""
        row_of = torch.repeat_interleave(rows, pages_per_row, output_size=total)
        starts = torch.cumsum(pages_per_row, 0) - pages_per_row
        first_of = torch.repeat_interleave(starts, pages_per_row, output_size=total)
        cols = torch.arange(total, device=self.device) - first_of
        return self.page_table[row_of, cols]

    def step_inputs(self, plan: ForwardBatch, cache: PagedKVCache) -> StepInputs:
        """The step's device tensors: one host-to-device copy, then gathers from the tables."""
        n, tokens, page_size = plan.num_seqs, plan.num_tokens, cache.shape.page_size
        pages_per_row = -(-plan.context_lens // page_size)
        kv_indptr = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(pages_per_row, out=kv_indptr[1:])
        sample_indices = plan.logit_token_indices()
        packed = to_device(
            np.concatenate(
                [plan.token_ids, plan.positions(), plan.token_rows(), plan.rows, pages_per_row, sample_indices]
            ),
            self.device,
        )
        token_ids, positions, token_rows, rows, pages_dev, sample_dev = torch.split(
            packed, [tokens, tokens, tokens, n, n, len(sample_indices)]
        )
        qo_indptr = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(plan.query_lens, out=qo_indptr[1:])
        return StepInputs(
            plan=plan,
            token_ids=self.input_tokens(token_ids, token_rows),
            positions=positions,
            slots=self.slots(cache, token_rows, positions),
            sample_indices=sample_dev,
            kv_indices=self.kv_indices(rows, pages_dev, int(kv_indptr[-1])),
            kv_indptr=kv_indptr,
            kv_last_page_len=plan.context_lens - (pages_per_row - 1) * page_size,
            qo_indptr=qo_indptr,
        )


def host_tensor(values: IntArray, device: torch.device) -> torch.Tensor:
    """int64 host values ready to copy to `device` asynchronously (pinned when it is a GPU)."""
    host = torch.from_numpy(np.ascontiguousarray(values, dtype=np.int64))
    if device.type == "cuda":
        host = host.pin_memory()  # from torch's caching host allocator: no cudaHostAlloc per step
    return host


def to_device(values: IntArray, device: torch.device) -> torch.Tensor:
    return host_tensor(values, device).to(device, non_blocking=True)

"""The step plan rank 0 broadcasts to every rank: which tokens to run and where their KV lives."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ForwardBatch:
    """One engine step over several sequences, flattened along the token axis.

    Sequence i contributes `query_lens[i]` tokens whose positions end at `context_lens[i]`
    (tokens in the KV cache once this step has run). Positions are derived, not sent.
    """

    token_ids: list[int]
    query_lens: list[int]
    context_lens: list[int]
    page_tables: list[list[int]]
    sample: list[bool]  # whether sequence i's last token produces a next token this step

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_seqs(self) -> int:
        return len(self.query_lens)

    @property
    def is_decode_only(self) -> bool:
        return all(q == 1 for q in self.query_lens)

    def positions(self) -> list[int]:
        out: list[int] = []
        for q, ctx in zip(self.query_lens, self.context_lens):
            out.extend(range(ctx - q, ctx))
        return out

    def kv_write_slots(self, page_size: int) -> tuple[list[int], list[int]]:
        """(page id, offset in page) where each of this step's tokens stores its K/V."""
        pages: list[int] = []
        offsets: list[int] = []
        for q, ctx, table in zip(self.query_lens, self.context_lens, self.page_tables):
            for pos in range(ctx - q, ctx):
                pages.append(table[pos // page_size])
                offsets.append(pos % page_size)
        return pages, offsets

    def sample_token_indices(self) -> list[int]:
        """Index, in the flattened token axis, of the last token of each sampling sequence."""
        indices, end = [], 0
        for q, wants in zip(self.query_lens, self.sample):
            end += q
            if wants:
                indices.append(end - 1)
        return indices


@dataclass(frozen=True)
class DeviceBatch:
    """ForwardBatch tensors on the rank's device, built once per step."""

    plan: ForwardBatch
    token_ids: torch.Tensor
    positions: torch.Tensor
    sample_indices: torch.Tensor

    @staticmethod
    def build(plan: ForwardBatch, device: torch.device) -> DeviceBatch:
        def as_tensor(values: list[int]) -> torch.Tensor:
            return torch.tensor(values, dtype=torch.int64).to(device, non_blocking=True)

        return DeviceBatch(
            plan=plan,
            token_ids=as_tensor(plan.token_ids),
            positions=as_tensor(plan.positions()),
            sample_indices=as_tensor(plan.sample_token_indices()),
        )

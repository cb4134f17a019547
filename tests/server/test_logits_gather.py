"""Vocab-parallel logits reach rank 0 only: it samples; the followers keep their own slice."""

from __future__ import annotations

import torch

from tpserve.distributed.group import TPGroup
from tpserve.testing.ranks import run_on_ranks


def _gather(group: TPGroup) -> torch.Tensor:
    shard = torch.arange(6, dtype=torch.float32).view(2, 3) + 100 * group.rank
    gathered = group.gather_last_dim_to_leader(shard)
    if not group.is_leader:  # checked on every follower: nothing beyond its own slice arrives
        assert torch.equal(gathered, shard), gathered
    return gathered


def test_rank_0_receives_every_ranks_slice_in_rank_order() -> None:
    gathered = run_on_ranks(3, "cpu", _gather, timeout_s=120)
    expected = torch.cat([torch.arange(6, dtype=torch.float32).view(2, 3) + 100 * r for r in range(3)], dim=-1)
    assert torch.equal(gathered, expected)

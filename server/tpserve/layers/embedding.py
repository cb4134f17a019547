"""Vocabulary-parallel embedding and the LM head that gathers its logits."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..distributed.group import TPGroup
from .skinny_gemm import SkinnyConfig, linear
from .weight_spec import WeightSpec


class VocabParallelEmbedding(nn.Module):
    """Embedding rows split by vocabulary range; the vocab is padded to a multiple of tp."""

    def __init__(
        self, vocab_size: int, hidden_size: int, group: TPGroup, dtype: torch.dtype, device: torch.device
    ) -> None:
        super().__init__()
        self.group = group
        self.vocab_size = vocab_size
        self.rows_per_rank = math.ceil(vocab_size / group.world_size)
        self.vocab_start = group.rank * self.rows_per_rank
        self.vocab_end = min(self.vocab_start + self.rows_per_rank, vocab_size)
        self.weight = nn.Parameter(
            torch.zeros(self.rows_per_rank, hidden_size, dtype=dtype, device=device), requires_grad=False
        )

    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        if self.group.world_size == 1:
            return F.embedding(token_ids, self.weight)
        local = (token_ids >= self.vocab_start) & (token_ids < self.vocab_end)
        local_ids = torch.where(local, token_ids - self.vocab_start, 0)
        out = F.embedding(local_ids, self.weight) * local.unsqueeze(-1).to(self.weight.dtype)
        return self.group.all_reduce(out)

    def weight_specs(self, name: str) -> list[WeightSpec]:
        rows = self.vocab_end - self.vocab_start
        return [WeightSpec(name, self.weight[:rows], 0, self.vocab_start, rows)]


class ParallelLMHead(nn.Module):
    """Logits for this rank's vocabulary range, gathered into full-vocabulary logits on rank 0."""

    def __init__(self, embedding: VocabParallelEmbedding, tied: bool) -> None:
        super().__init__()
        self.embedding = embedding
        self.tied = tied
        self.weight = (
            embedding.weight if tied else nn.Parameter(torch.zeros_like(embedding.weight), requires_grad=False)
        )
        self.skinny_rows = 0  # as in ColumnParallelLinear
        self.skinny_config: SkinnyConfig | None = None

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        projected = linear(hidden, self.weight, None, self.skinny_rows, self.skinny_config)
        # Rank 0 gets the whole vocabulary's logits; a follower keeps its own slice (unused).
        logits = self.embedding.group.gather_last_dim_to_leader(projected)
        return logits[..., : self.embedding.vocab_size]

    def weight_specs(self, name: str) -> list[WeightSpec]:
        if self.tied:
            return []
        rows = self.embedding.vocab_end - self.embedding.vocab_start
        return [WeightSpec(name, self.weight[:rows], 0, self.embedding.vocab_start, rows)]

"""The attention backend interface: plan once per step, run once per layer."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch

from ..batch import ForwardBatch
from ..kv_cache import PagedKVCache


@dataclass(frozen=True)
class AttentionLayerShape:
    num_heads: int  # query heads on this rank
    num_kv_heads: int  # KV heads on this rank
    head_dim: int
    scale: float


class AttentionBackend(ABC):
    def __init__(self, cache: PagedKVCache, shape: AttentionLayerShape) -> None:
        self.cache = cache
        self.shape = shape

    @abstractmethod
    def plan(self, batch: ForwardBatch) -> None:
        """Prepare per-step metadata (index tensors, kernel plans) shared by all layers."""

    @abstractmethod
    def forward(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Store this step's k/v in the cache, attend, and return [tokens, heads * head_dim].

        q is [tokens, num_heads, head_dim]; k and v are [tokens, num_kv_heads, head_dim].
        """

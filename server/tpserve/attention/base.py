"""The attention backend interface: plan once per step, run once per layer."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Protocol

import torch

from ..core.batch import StepInputs
from ..kvcache.paged_cache import PagedKVCache


@dataclass(frozen=True)
class AttentionLayerShape:
    num_heads: int  # query heads on this rank
    num_kv_heads: int  # KV heads on this rank
    head_dim: int
    scale: float


class Rotary(Protocol):
    """The model's rotary embedding, as attention sees it (layers/rotary.py)."""

    @property
    def fused_table(self) -> torch.Tensor | None:
        """[positions, head_dim] float32 cosines then sines, when a fused kernel may rotate."""
        ...

    def __call__(
        self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]: ...


class AttentionBackend(ABC):
    # Whether a decode step can be captured in a CUDA graph and replayed after
    # `plan_graph_decode`: every device tensor the step reads must stay at one address.
    supports_cuda_graph = False
    # Whether a prefill step of one sequence can be captured and replayed after `plan_graph_prefill`.
    supports_prefill_graph = False

    def __init__(self, cache: PagedKVCache, shape: AttentionLayerShape) -> None:
        self.cache = cache
        self.shape = shape

    def bind(self, cache: PagedKVCache) -> None:
        """Use `cache` from now on (the real cache replaces the probe used to size it)."""
        self.cache = cache
        self.release_graph_plans()

    def release_graph_plans(self) -> None:  # noqa: B027 (a no-op for backends without graph plans)
        """Forget the per-batch-size plans made for captured graphs (and the memory they hold)."""

    @abstractmethod
    def plan(self, inputs: StepInputs) -> None:
        """Prepare per-step metadata (index tensors, kernel plans) shared by all layers.

        The step's K/V go to `inputs.slots`; its context pages are `inputs.kv_indices`.
        """

    def plan_graph_decode(self, inputs: StepInputs) -> None:
        """Plan a decode-only step of a captured batch size.

        `inputs.slots` is then the graph's static slot tensor, filled inside the graph. The
        default plans as usual; backends that can be captured keep their own metadata in
        static buffers as well.
        """
        self.plan(inputs)

    def plan_graph_prefill(self, inputs: StepInputs, bucket: int) -> None:
        """Plan a prefill step of one sequence inside a captured graph of `bucket` token rows.

        The sequence's tokens are the first `inputs.plan.num_tokens` rows; the rest pad the
        bucket and need no attention output. `inputs.slots` is the graph's static slot tensor.
        """
        self.plan(inputs)

    def rotate_and_attend(
        self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor, rotary: Rotary
    ) -> torch.Tensor:
        """Rotate q and k by `rotary` at `positions`, then `forward`. A backend may instead rotate
        while it stores K and V (one kernel for both)."""
        q, k = rotary(positions, q, k)
        return self.forward(layer, q, k, v)

    @abstractmethod
    def forward(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Store this step's k/v in the cache, attend, and return [tokens, heads * head_dim].

        q is [tokens, num_heads, head_dim]; k and v are [tokens, num_kv_heads, head_dim].
        """

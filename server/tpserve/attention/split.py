"""`--attn prefill,decode`: one backend for steps with prefill chunks, another for decode-only steps."""

from __future__ import annotations

import torch

from ..core.batch import StepInputs
from ..kvcache.paged_cache import PagedKVCache
from .base import AttentionBackend, Rotary


class PrefillDecodeSplit(AttentionBackend):
    def __init__(self, prefill: AttentionBackend, decode: AttentionBackend) -> None:
        super().__init__(prefill.cache, prefill.shape)
        self.prefill = prefill
        self.decode = decode
        self._active = decode
        self.supports_cuda_graph = decode.supports_cuda_graph
        self.supports_prefill_graph = prefill.supports_prefill_graph

    def bind(self, cache: PagedKVCache) -> None:
        super().bind(cache)
        self.prefill.bind(cache)
        self.decode.bind(cache)

    def release_graph_plans(self) -> None:
        self.prefill.release_graph_plans()
        self.decode.release_graph_plans()

    def plan_graph_decode(self, inputs: StepInputs) -> None:
        self._active = self.decode
        self.decode.plan_graph_decode(inputs)

    def plan_graph_prefill(self, inputs: StepInputs, bucket: int) -> None:
        self._active = self.prefill
        self.prefill.plan_graph_prefill(inputs, bucket)

    def plan(self, inputs: StepInputs) -> None:
        self._active = self.decode if inputs.is_decode_only else self.prefill
        self._active.plan(inputs)

    def rotate_and_attend(
        self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor, rotary: Rotary
    ) -> torch.Tensor:
        return self._active.rotate_and_attend(layer, q, k, v, positions, rotary)

    def forward(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return self._active.forward(layer, q, k, v)

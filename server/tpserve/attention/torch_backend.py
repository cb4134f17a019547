"""Reference attention over the paged cache in plain torch: runs anywhere, favours clarity."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..core.batch import StepInputs
from .base import AttentionBackend


@dataclass(frozen=True)
class _SeqView:
    token_start: int
    query_len: int
    context_pages: torch.Tensor  # page id of each context position
    context_offsets: torch.Tensor  # offset inside its page
    causal_mask: torch.Tensor | None  # [query_len, context_len], None for single-token decode


class TorchPagedAttention(AttentionBackend):
    def plan(self, inputs: StepInputs) -> None:
        device = self.cache.layers[0].device
        page_size = self.cache.shape.page_size
        self._slots = inputs.slots
        self._seqs: list[_SeqView] = []
        kv_pages = inputs.kv_indices
        plan = inputs.plan
        for i, (query_len, context_len) in enumerate(zip(plan.query_lens.tolist(), plan.context_lens.tolist())):
            pages = kv_pages[int(inputs.kv_indptr[i]) : int(inputs.kv_indptr[i + 1])]
            positions = torch.arange(context_len, device=device)
            first_new = context_len - query_len
            mask = None
            if query_len > 1:
                query_positions = torch.arange(first_new, context_len, device=device).unsqueeze(1)
                mask = positions.unsqueeze(0) <= query_positions
            start = int(inputs.qo_indptr[i])
            self._seqs.append(_SeqView(start, query_len, pages[positions // page_size], positions % page_size, mask))

    def forward(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        self.cache.write(layer, self._slots, k, v)
        cache = self.cache.layers[layer]
        group = self.shape.num_heads // self.shape.num_kv_heads
        out = torch.empty_like(q)
        for seq in self._seqs:
            keys = cache[seq.context_pages, 0, seq.context_offsets]  # [context, kv_heads, dim]
            values = cache[seq.context_pages, 1, seq.context_offsets]
            if group > 1:
                keys = keys.repeat_interleave(group, dim=1)
                values = values.repeat_interleave(group, dim=1)
            query = q[seq.token_start : seq.token_start + seq.query_len]
            attended = F.scaled_dot_product_attention(
                query.transpose(0, 1),
                keys.transpose(0, 1),
                values.transpose(0, 1),
                attn_mask=seq.causal_mask,
                scale=self.shape.scale,
            )
            out[seq.token_start : seq.token_start + seq.query_len] = attended.transpose(0, 1)
        return out.reshape(q.shape[0], -1)

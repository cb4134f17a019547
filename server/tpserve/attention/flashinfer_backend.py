"""flashinfer paged attention (`--attn fi`): batch wrappers planned once per step, run per layer.

Decode-only steps use the batch decode wrapper; steps with any prefill chunk use the batch prefill
wrapper (causal, with the cached context in the same paged KV cache). The cache is flashinfer's
NHD layout already ([pages, 2, page_size, kv_heads, head_dim]), so nothing is copied.
Imported only when the backend is chosen: the CPU path never imports flashinfer.
"""

from __future__ import annotations

import flashinfer
import torch

from ..batch import ForwardBatch
from ..kv_cache import PagedKVCache
from .base import AttentionBackend, AttentionLayerShape

WORKSPACE_BYTES = 256 * 1024 * 1024


class FlashInferPagedAttention(AttentionBackend):
    def __init__(self, cache: PagedKVCache, shape: AttentionLayerShape) -> None:
        super().__init__(cache, shape)
        device = cache.layers[0].device
        self.dtype = cache.layers[0].dtype
        self.workspace = torch.empty(WORKSPACE_BYTES, dtype=torch.uint8, device=device)
        self.decode = flashinfer.BatchDecodeWithPagedKVCacheWrapper(
            self.workspace, "NHD", use_tensor_cores=shape.num_heads // shape.num_kv_heads >= 4
        )
        self.prefill = flashinfer.BatchPrefillWithPagedKVCacheWrapper(self.workspace, "NHD")
        self.device = device
        self._decode_only = True

    def plan(self, batch: ForwardBatch) -> None:
        page_size = self.cache.shape.page_size
        pages_used = [-(-ctx // page_size) for ctx in batch.context_lens]
        indptr = [0]
        for n in pages_used:
            indptr.append(indptr[-1] + n)
        indices = [p for table, n in zip(batch.page_tables, pages_used) for p in table[:n]]
        last_page_len = [ctx - (n - 1) * page_size for ctx, n in zip(batch.context_lens, pages_used)]
        # Metadata is built on the host (flashinfer plans there) and copied once per step.
        kv_indptr = torch.tensor(indptr, dtype=torch.int32)
        kv_indices = torch.tensor(indices, dtype=torch.int32).to(self.device, non_blocking=True)
        kv_last = torch.tensor(last_page_len, dtype=torch.int32)
        self._slots = self.cache.slots_for(batch)
        common = dict(
            num_qo_heads=self.shape.num_heads,
            num_kv_heads=self.shape.num_kv_heads,
            page_size=page_size,
            sm_scale=self.shape.scale,
            q_data_type=self.dtype,
            kv_data_type=self.dtype,
        )
        self._decode_only = batch.is_decode_only
        if self._decode_only:
            self.decode.plan(kv_indptr, kv_indices, kv_last, head_dim=self.shape.head_dim, **common)
        else:
            qo_indptr = [0]
            for q in batch.query_lens:
                qo_indptr.append(qo_indptr[-1] + q)
            self.prefill.plan(
                torch.tensor(qo_indptr, dtype=torch.int32), kv_indptr, kv_indices, kv_last,
                head_dim_qk=self.shape.head_dim, causal=True, **common,
            )

    def forward(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        self.cache.write(layer, self._slots, k, v)
        cache = self.cache.layers[layer]
        wrapper = self.decode if self._decode_only else self.prefill
        out = wrapper.run(q.contiguous(), cache)
        return out.reshape(q.shape[0], -1)

"""flashinfer paged attention (`--attn fi`): batch wrappers planned once per step, run per layer.

Decode-only steps use the batch decode wrapper; steps with any prefill chunk use the batch prefill
wrapper (causal, with the cached context in the same paged KV cache). The cache is flashinfer's
NHD layout already ([pages, 2, page_size, kv_heads, head_dim]), so nothing is copied.
Imported only when the backend is chosen: the CPU path never imports flashinfer.
"""

from __future__ import annotations

from typing import Any

import flashinfer
import torch

from ..core.batch import IntArray, StepInputs
from ..kvcache.paged_cache import PagedKVCache
from .base import AttentionBackend, AttentionLayerShape, Rotary
from .rope_store import rope_and_store, rope_store_wanted

WORKSPACE_BYTES = 256 * 1024 * 1024


class FlashInferPagedAttention(AttentionBackend):
    supports_cuda_graph = True
    supports_prefill_graph = True

    def __init__(self, cache: PagedKVCache, shape: AttentionLayerShape) -> None:
        super().__init__(cache, shape)
        device = cache.layers[0].device
        self.dtype = cache.layers[0].dtype
        self.workspace = torch.empty(WORKSPACE_BYTES, dtype=torch.uint8, device=device)
        # GQA with >= 4 query heads per KV head is faster on the tensor-core (prefill) kernels.
        self.tensor_cores = shape.num_heads // shape.num_kv_heads >= 4
        self.decode = flashinfer.BatchDecodeWithPagedKVCacheWrapper(
            self.workspace, "NHD", use_tensor_cores=self.tensor_cores
        )
        self.prefill = flashinfer.BatchPrefillWithPagedKVCacheWrapper(self.workspace, "NHD")
        self.device = device
        self.rope_store = rope_store_wanted(device)  # rotary and K/V store in one kernel (opt-in)
        self._decode_only = True
        self._active_decode = self.decode
        self._active_prefill = self.prefill
        # CUDA-graph decode: one wrapper per captured batch size, all planning into shared
        # static buffers (flashinfer fixes the batch size of a graph-mode wrapper).
        self._graph_wrappers: dict[int, flashinfer.BatchDecodeWithPagedKVCacheWrapper] = {}
        self._graph_indptr = torch.empty(0, dtype=torch.int32, device=device)
        self._graph_indices = torch.empty(0, dtype=torch.int32, device=device)
        self._graph_last_page_len = torch.empty(0, dtype=torch.int32, device=device)
        # CUDA-graph prefill of one sequence: one wrapper per captured token bucket, sharing
        # [qo_indptr (2), kv_indptr (2), last_page_len (1)] and a page list.
        self._prefill_graph_wrappers: dict[int, flashinfer.BatchPrefillWithPagedKVCacheWrapper] = {}
        self._prefill_graph_small = torch.empty(0, dtype=torch.int32, device=device)
        self._prefill_graph_indices = torch.empty(0, dtype=torch.int32, device=device)

    def release_graph_plans(self) -> None:
        # Graph-mode plans are sized by the cache's page count: a new cache needs new ones.
        self._graph_wrappers.clear()
        self._graph_indptr = self._graph_indices = self._graph_last_page_len = torch.empty(
            0, dtype=torch.int32, device=self.device
        )
        self._prefill_graph_wrappers.clear()
        self._prefill_graph_small = self._prefill_graph_indices = torch.empty(0, dtype=torch.int32, device=self.device)
        self._active_prefill = self.prefill

    @staticmethod
    def _host(values: IntArray) -> torch.Tensor:
        return torch.from_numpy(values.astype("int32"))

    def _plan_args(self) -> dict[str, Any]:
        return dict(
            num_qo_heads=self.shape.num_heads,
            num_kv_heads=self.shape.num_kv_heads,
            page_size=self.cache.shape.page_size,
            sm_scale=self.shape.scale,
            q_data_type=self.dtype,
            kv_data_type=self.dtype,
        )

    def plan(self, inputs: StepInputs) -> None:
        kv_indptr, kv_last = self._host(inputs.kv_indptr), self._host(inputs.kv_last_page_len)
        kv_indices = inputs.kv_indices.to(torch.int32)
        self._slots = inputs.slots
        self._decode_only = inputs.is_decode_only
        self._active_prefill = self.prefill
        if self._decode_only:
            self._active_decode = self.decode
            self.decode.plan(kv_indptr, kv_indices, kv_last, head_dim=self.shape.head_dim, **self._plan_args())
        else:
            self.prefill.plan(
                self._host(inputs.qo_indptr),
                kv_indptr,
                kv_indices,
                kv_last,
                head_dim_qk=self.shape.head_dim,
                causal=True,
                **self._plan_args(),
            )

    def plan_graph_decode(self, inputs: StepInputs) -> None:
        wrapper = self._graph_wrapper(inputs.num_seqs)
        wrapper.plan(
            self._host(inputs.kv_indptr),
            inputs.kv_indices.to(torch.int32),
            self._host(inputs.kv_last_page_len),
            head_dim=self.shape.head_dim,
            **self._plan_args(),
        )
        self._slots = inputs.slots
        self._decode_only = True
        self._active_decode = wrapper

    def _graph_wrapper(self, batch_size: int) -> flashinfer.BatchDecodeWithPagedKVCacheWrapper:
        wrapper = self._graph_wrappers.get(batch_size)
        if wrapper is not None:
            return wrapper
        # A decode batch reads each cache page at most once, plus one padding page per row.
        needed_indices = self.cache.shape.num_pages + batch_size
        if len(self._graph_indptr) < batch_size + 1 or len(self._graph_indices) < needed_indices:
            if self._graph_wrappers:
                raise RuntimeError("capture the largest decode graph first: its buffers are shared")
            self._graph_indptr = torch.zeros(batch_size + 1, dtype=torch.int32, device=self.device)
            self._graph_indices = torch.zeros(needed_indices, dtype=torch.int32, device=self.device)
            self._graph_last_page_len = torch.zeros(batch_size, dtype=torch.int32, device=self.device)
        wrapper = flashinfer.BatchDecodeWithPagedKVCacheWrapper(
            self.workspace,
            "NHD",
            use_cuda_graph=True,
            use_tensor_cores=self.tensor_cores,
            paged_kv_indptr_buffer=self._graph_indptr[: batch_size + 1],
            paged_kv_indices_buffer=self._graph_indices,
            paged_kv_last_page_len_buffer=self._graph_last_page_len[:batch_size],
        )
        self._graph_wrappers[batch_size] = wrapper
        return wrapper

    def plan_graph_prefill(self, inputs: StepInputs, bucket: int) -> None:
        # One sequence of up to `bucket` rows: flashinfer's graph mode fixes the batch size (1)
        # and the most rows (the bucket, from the plan at capture); the kernels then work on the
        # planned rows only, read from the plan's device buffers at every replay.
        wrapper = self._prefill_graph_wrapper(bucket)
        wrapper.plan(
            self._host(inputs.qo_indptr),
            self._host(inputs.kv_indptr),
            inputs.kv_indices.to(torch.int32),
            self._host(inputs.kv_last_page_len),
            head_dim_qk=self.shape.head_dim,
            causal=True,
            **self._plan_args(),
        )
        self._slots = inputs.slots
        self._decode_only = False
        self._active_prefill = wrapper

    def _prefill_graph_wrapper(self, bucket: int) -> flashinfer.BatchPrefillWithPagedKVCacheWrapper:
        wrapper = self._prefill_graph_wrappers.get(bucket)
        if wrapper is not None:
            return wrapper
        # A sequence reads each cache page at most once; at capture, the padding row's bucket.
        needed_indices = self.cache.shape.num_pages + -(-bucket // self.cache.shape.page_size)
        if len(self._prefill_graph_indices) < needed_indices:
            if self._prefill_graph_wrappers:
                raise RuntimeError("capture the largest prefill graph first: its buffers are shared")
            self._prefill_graph_small = torch.zeros(5, dtype=torch.int32, device=self.device)
            self._prefill_graph_indices = torch.zeros(needed_indices, dtype=torch.int32, device=self.device)
        small = self._prefill_graph_small
        wrapper = flashinfer.BatchPrefillWithPagedKVCacheWrapper(
            self.workspace,
            "NHD",
            use_cuda_graph=True,
            qo_indptr_buf=small[0:2],
            paged_kv_indptr_buf=small[2:4],
            paged_kv_indices_buf=self._prefill_graph_indices,
            paged_kv_last_page_len_buf=small[4:5],
        )
        self._prefill_graph_wrappers[bucket] = wrapper
        return wrapper

    def rotate_and_attend(
        self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor, rotary: Rotary
    ) -> torch.Tensor:
        table = rotary.fused_table if self.rope_store else None  # the default path asks nothing more
        if table is None:
            return super().rotate_and_attend(layer, q, k, v, positions, rotary)
        shape = self.cache.shape
        rows = self.cache.layers[layer].view(-1, shape.num_kv_heads, shape.head_dim)
        rope_and_store(q, k, v, positions, table, rows, self._slots)
        return self._attend(layer, q)

    def forward(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        self.cache.write(layer, self._slots, k, v)
        return self._attend(layer, q)

    def _attend(self, layer: int, q: torch.Tensor) -> torch.Tensor:
        """This step's attention of q over the layer's cache, which already holds the step's K/V."""
        wrapper = self._active_decode if self._decode_only else self._active_prefill
        out: torch.Tensor = wrapper.run(q.contiguous(), self.cache.layers[layer])
        return out.reshape(q.shape[0], -1)

"""Paged KV cache storage: every layer's K and V in pages of `page_size` tokens."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class KVCacheShape:
    num_layers: int
    num_pages: int
    page_size: int
    num_kv_heads: int  # on this rank
    head_dim: int

    def bytes_per_page(self, dtype: torch.dtype) -> int:
        element = torch.empty((), dtype=dtype).element_size()
        return self.num_layers * 2 * self.page_size * self.num_kv_heads * self.head_dim * element

    @property
    def total_tokens(self) -> int:
        return self.num_pages * self.page_size


class PagedKVCache:
    """Per layer one tensor [num_pages, 2 (k, v), page_size, kv_heads, head_dim].

    This is flashinfer's NHD paged layout, so the GPU backend can use the storage as it is.
    One page more than `shape.num_pages` is allocated: the padding page, which rows that only
    pad a batch up to a captured CUDA-graph size write to and read from. The scheduler never
    hands it out, so padding cannot touch a real sequence's cache.
    """

    def __init__(self, shape: KVCacheShape, dtype: torch.dtype, device: torch.device) -> None:
        self.shape = shape
        self.padding_page = shape.num_pages
        self.layers = [
            torch.zeros(
                shape.num_pages + 1, 2, shape.page_size, shape.num_kv_heads, shape.head_dim, dtype=dtype, device=device
            )
            for _ in range(shape.num_layers)
        ]

    def slots(self, pages: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        """[tokens, 2]: the K row and V row of tokens at (page, offset), for `write`."""
        page_size = self.shape.page_size
        k_rows = pages * (2 * page_size) + offsets
        return torch.stack([k_rows, k_rows + page_size], dim=1)

    def write(self, layer: int, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store this step's k and v ([tokens, kv_heads, head_dim]) at their `slots` rows.

        A layer is seen as [(num_pages + 1) * 2 * page_size, kv_heads, head_dim] rows; slots are
        [tokens, 2] (K row, V row), as `RequestTables.slots` computes them.

        k and v usually are two slices of one fused QKV output: then both go in with one
        indexed write (one kernel instead of two per layer).
        """
        rows = self.layers[layer].view(-1, self.shape.num_kv_heads, self.shape.head_dim)
        pair = _as_pair(k, v)
        if pair is not None:
            rows[slots] = pair
            return
        rows[slots[:, 0]] = k
        rows[slots[:, 1]] = v


def _as_pair(k: torch.Tensor, v: torch.Tensor) -> torch.Tensor | None:
    """A [tokens, 2, ...] view of k and v when v lies at a fixed distance after k in one buffer."""
    if k.shape != v.shape or k.stride() != v.stride() or k.dtype != v.dtype:
        return None
    if k.untyped_storage().data_ptr() != v.untyped_storage().data_ptr():
        return None
    distance = v.storage_offset() - k.storage_offset()
    if distance <= 0:
        return None
    return k.as_strided((k.shape[0], 2, *k.shape[1:]), (k.stride(0), distance, *k.stride()[1:]))

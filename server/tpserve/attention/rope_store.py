"""Rotary embedding and the K/V store of one layer as one Triton kernel (CUDA; opt-in).

Each layer of a step rotates q and k (flashinfer's RoPE kernel) and then writes k and v into the
paged cache (one indexed store): two launches per layer, 64 of the ~456 kernels of a batch-1
decode step of a 32-layer model, where the step waits on kernel launches more than on their bytes
(rotary 0.05 ms and the K/V store 0.13 ms of a 5 ms step, 2026-12-03c). Here one program per token
and head loads that head once: a query head is rotated in place, a key head is rotated into its
cache row, a value head is copied into its cache row. The key heads are not written back to the
step's own K tensor: attention reads K and V from the cache only.

`TPSERVE_ROPE_STORE=1` turns it on (flashinfer backend, CUDA) until a GPU run shows its gain.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from typing import Any

import torch

ROPE_STORE_ENV = "TPSERVE_ROPE_STORE"


def rope_store_wanted(device: torch.device) -> bool:
    """Whether this process asked for the fused kernel and can run it."""
    return (
        os.environ.get(ROPE_STORE_ENV, "0") == "1"
        and device.type == "cuda"
        and importlib.util.find_spec("triton") is not None
    )


@functools.cache
def _kernel() -> Any:
    """The Triton kernel; built on first use, so CPU-only installs never import Triton."""
    import triton
    import triton.language as tl

    @triton.jit
    def rope_store_kernel(
        q_ptr,
        k_ptr,
        v_ptr,
        positions_ptr,
        cos_sin_ptr,
        cache_ptr,
        slots_ptr,
        q_token_stride,
        k_token_stride,
        v_token_stride,
        cos_sin_stride,
        NUM_HEADS: tl.constexpr,
        NUM_KV_HEADS: tl.constexpr,
        HEAD_DIM: tl.constexpr,
        HALF_BLOCK: tl.constexpr,
    ) -> None:
        token = tl.program_id(0)
        head = tl.program_id(1)  # query heads, then key heads, then value heads
        half = HEAD_DIM // 2
        offsets = tl.arange(0, HALF_BLOCK)
        mask = offsets < half
        row_width = NUM_KV_HEADS * HEAD_DIM  # one cache row: every KV head of one token
        if head < NUM_HEADS + NUM_KV_HEADS:
            position = tl.load(positions_ptr + token)
            cos = tl.load(cos_sin_ptr + position * cos_sin_stride + offsets, mask=mask)
            sin = tl.load(cos_sin_ptr + position * cos_sin_stride + half + offsets, mask=mask)
            if head < NUM_HEADS:
                source = q_ptr + token * q_token_stride + head * HEAD_DIM
                target = source
            else:
                kv_head = head - NUM_HEADS
                source = k_ptr + token * k_token_stride + kv_head * HEAD_DIM
                target = cache_ptr + tl.load(slots_ptr + 2 * token) * row_width + kv_head * HEAD_DIM
            first = tl.load(source + offsets, mask=mask).to(tl.float32)
            second = tl.load(source + half + offsets, mask=mask).to(tl.float32)
            # Neox-style rotation of the two halves, in float32, rounded once (as flashinfer's kernel).
            tl.store(target + offsets, (first * cos - second * sin).to(target.dtype.element_ty), mask=mask)
            tl.store(target + half + offsets, (second * cos + first * sin).to(target.dtype.element_ty), mask=mask)
        else:
            kv_head = head - NUM_HEADS - NUM_KV_HEADS
            source = v_ptr + token * v_token_stride + kv_head * HEAD_DIM
            target = cache_ptr + tl.load(slots_ptr + 2 * token + 1) * row_width + kv_head * HEAD_DIM
            tl.store(target + offsets, tl.load(source + offsets, mask=mask), mask=mask)
            tl.store(target + half + offsets, tl.load(source + half + offsets, mask=mask), mask=mask)

    return rope_store_kernel


def rope_and_store(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    positions: torch.Tensor,
    cos_sin: torch.Tensor,
    cache_rows: torch.Tensor,
    slots: torch.Tensor,
) -> None:
    """Rotate q in place; write rotated k and v to their cache rows.

    q [tokens, heads, head_dim], k and v [tokens, kv_heads, head_dim] (views of one QKV output are
    fine: only the last two dimensions must be dense); positions [tokens]; cos_sin [positions,
    head_dim] float32, the cosines of the rotation's frequencies then their sines; cache_rows the
    layer seen as [rows, kv_heads, head_dim]; slots [tokens, 2], each token's K row and V row.
    """
    tokens, num_heads, head_dim = q.shape
    num_kv_heads = k.shape[1]
    for name, tensor in (("q", q), ("k", k), ("v", v), ("cache_rows", cache_rows)):
        if tensor.stride(2) != 1 or tensor.stride(1) != head_dim:
            raise ValueError(f"{name}: heads must be dense in the last two dimensions, strides {tensor.stride()}")
    if not (slots.is_contiguous() and positions.is_contiguous() and cos_sin.stride(1) == 1):
        raise ValueError("slots, positions and the rows of cos_sin must be contiguous")
    if tokens == 0:
        return
    _kernel()[(tokens, num_heads + 2 * num_kv_heads)](
        q,
        k,
        v,
        positions,
        cos_sin,
        cache_rows,
        slots,
        q.stride(0),
        k.stride(0),
        v.stride(0),
        cos_sin.stride(0),
        NUM_HEADS=num_heads,
        NUM_KV_HEADS=num_kv_heads,
        HEAD_DIM=head_dim,
        HALF_BLOCK=max(1, 1 << (head_dim // 2 - 1).bit_length()),
        num_warps=1,
    )

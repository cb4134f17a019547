"""A decode step's few rows times a weight matrix, as one Triton kernel (CUDA, fp16/bf16).

At batch 1-4 every projection of a decode step is memory-bound: it reads its whole weight once for
a handful of output values. cuBLAS reads the large matrices at ~4.1 TB/s on an H200 but the small
QKV and O ones at 3.2-3.3 TB/s, and splits K with a separate reduction kernel for O and down
(bench/gemv.py). Here each program streams a block of W's rows over all of K, once, and
multiplies it with every row of x at the same time, with no second kernel: the aim is to read
every weight at the rate of a copy (reached on O, 4.1 TB/s; not yet on gate/up).

`linear(x, weight, bias)` takes this path, with TPSERVE_SKINNY_GEMM=1, where it applies (CUDA,
fp16/bf16, at most SKINNY_MAX_ROWS rows, contiguous operands) and F.linear otherwise. It is off
by default: on an H200 it beats cuBLAS at one row on the O, QKV and LM-head shapes only, and
loses at four rows (docs/performance.md, bench/gemv.py). The block shapes are tuned once per
weight shape on first use, which the decode graphs' eager warm-up does before any capture.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from typing import Any

import torch
import torch.nn.functional as F

SKINNY_MAX_ROWS = 4
_DTYPES = (torch.float16, torch.bfloat16)


# (BLOCK_N, BLOCK_K, num_warps, num_stages) the autotuner chooses among: enough rows per program
# to keep loads wide, few enough that the small matrices still spread over every SM.
TUNING_CONFIGS = (
    (2, 512, 2, 3),
    (4, 256, 4, 3),
    (4, 512, 4, 2),
    (8, 256, 4, 3),
    (8, 256, 2, 4),
    (8, 512, 4, 2),
    (16, 128, 4, 4),
    (16, 256, 8, 3),
)


@functools.cache
def _kernel() -> Any:
    """The Triton kernel; built on first use, so CPU-only installs never import Triton."""
    import triton
    import triton.language as tl

    @triton.heuristics({"EVEN_K": lambda args: args["K"] % args["BLOCK_K"] == 0})
    @triton.jit
    def skinny_kernel(
        x_ptr,
        w_ptr,
        bias_ptr,
        y_ptr,
        M,
        N,
        K,
        HAS_BIAS: tl.constexpr,
        BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr,
        BLOCK_K: tl.constexpr,
        EVEN_K: tl.constexpr,
    ) -> None:
        rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)  # this program's rows of W
        row_ok = rows < N
        ms = tl.arange(0, BLOCK_M)
        m_ok = ms < M
        cols = tl.arange(0, BLOCK_K)
        # Products accumulate elementwise and are summed over K once at the end: the loop is
        # loads and multiply-adds only, with no reduction across lanes per block of K.
        acc = tl.zeros((BLOCK_M, BLOCK_N, BLOCK_K), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            k = k0 + cols
            w_at = w_ptr + rows[:, None] * K + k[None, :]
            x_at = x_ptr + ms[:, None] * K + k[None, :]
            if EVEN_K:
                w = tl.load(w_at, mask=row_ok[:, None], other=0.0)
                x = tl.load(x_at, mask=m_ok[:, None], other=0.0)
            else:
                k_ok = k < K
                w = tl.load(w_at, mask=row_ok[:, None] & k_ok[None, :], other=0.0)
                x = tl.load(x_at, mask=m_ok[:, None] & k_ok[None, :], other=0.0)
            acc += w.to(tl.float32)[None, :, :] * x.to(tl.float32)[:, None, :]
        y = tl.sum(acc, axis=2)
        if HAS_BIAS:
            y += tl.load(bias_ptr + rows, mask=row_ok, other=0.0).to(tl.float32)[None, :]
        out = y_ptr + ms[:, None] * N + rows[None, :]
        tl.store(out, y.to(y_ptr.dtype.element_ty), mask=m_ok[:, None] & row_ok[None, :])

    return skinny_kernel


@functools.cache
def _tuned_kernel() -> Any:
    import triton

    configs = [triton.Config({"BLOCK_N": n, "BLOCK_K": k}, num_warps=w, num_stages=s) for n, k, w, s in TUNING_CONFIGS]
    return triton.autotune(configs=configs, key=["N", "K", "BLOCK_M"], warmup=5, rep=20)(_kernel())


def skinny_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    blocks: tuple[int, int] | None = None,
    num_warps: int = 4,
    num_stages: int = 3,
) -> torch.Tensor:
    """x W^T (+ bias) for a 2-D x of at most SKINNY_MAX_ROWS rows, by the Triton kernel.

    `blocks` (BLOCK_N, BLOCK_K), with `num_warps` and `num_stages`, skips the autotuner (which
    times on a GPU): for Triton's interpreter on CPU, and for bench/gemv.py's sweep.
    """
    import triton

    rows, k = x.shape
    n = weight.shape[0]
    y = torch.empty(rows, n, dtype=x.dtype, device=x.device)
    fixed: dict[str, int] = {}
    if blocks is not None:
        fixed = {"BLOCK_N": blocks[0], "BLOCK_K": blocks[1], "num_warps": num_warps, "num_stages": num_stages}
    kernel = _tuned_kernel() if blocks is None else _kernel()
    kernel[lambda meta: (triton.cdiv(n, meta["BLOCK_N"]),)](
        x,
        weight,
        bias if bias is not None else weight,  # never read without HAS_BIAS
        y,
        rows,
        n,
        k,
        HAS_BIAS=bias is not None,
        BLOCK_M=triton.next_power_of_2(rows),
        **fixed,
    )
    return y


@functools.cache
def skinny_gemm_available() -> bool:
    return os.environ.get("TPSERVE_SKINNY_GEMM", "0") == "1" and importlib.util.find_spec("triton") is not None


def applies(x: torch.Tensor, weight: torch.Tensor) -> bool:
    return (
        x.is_cuda
        and x.dim() == 2
        and 0 < x.shape[0] <= SKINNY_MAX_ROWS
        and x.dtype in _DTYPES
        and weight.dtype == x.dtype
        and x.is_contiguous()
        and weight.is_contiguous()
        and skinny_gemm_available()
    )


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear, by the skinny kernel where a decode step's few rows meet a CUDA weight."""
    if applies(x, weight):
        return skinny_linear(x, weight, bias)
    return F.linear(x, weight, bias)

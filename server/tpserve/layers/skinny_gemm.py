"""A decode step's few rows times a weight matrix, as one Triton kernel (CUDA, fp16/bf16).

At batch 1-4 every projection of a decode step is memory-bound: it reads its whole weight once for
a handful of output values. cuBLAS reads the large matrices at ~4.1 TB/s on an H200 but the small
QKV and O ones at 3.2-3.3 TB/s, and splits K with a separate reduction kernel for O and down
(bench/gemv.py). Here each program streams a block of W's rows over all of K, once, and
multiplies it with every row of x at the same time, with no second kernel: the aim is to read
every weight at the rate of a copy (reached on O, 4.1 TB/s; not yet on gate/up).

`linear(x, weight, bias, skinny_rows, config)` takes this path where a projection allows it for
the rows at hand (`skinny_choice` decides, per weight shape, at start-up) and F.linear otherwise.
"""

from __future__ import annotations

import functools
import importlib.util
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F

SKINNY_MAX_ROWS = 4
_DTYPES = (torch.float16, torch.bfloat16)


class SkinnyConfig(NamedTuple):
    block_n: int
    block_k: int
    num_warps: int
    num_stages: int


# The block shapes tuning chooses among: enough rows per program to keep loads wide, few enough
# that the small matrices still spread over every SM.
TUNING_CONFIGS = (
    SkinnyConfig(2, 512, 2, 3),
    SkinnyConfig(2, 1024, 4, 3),
    SkinnyConfig(4, 1024, 4, 3),
    SkinnyConfig(4, 1024, 8, 2),
    SkinnyConfig(4, 256, 4, 3),
    SkinnyConfig(4, 512, 4, 2),
    SkinnyConfig(8, 256, 4, 3),
    SkinnyConfig(8, 256, 2, 4),
    SkinnyConfig(8, 512, 4, 2),
    SkinnyConfig(16, 128, 4, 4),
    SkinnyConfig(16, 256, 8, 3),
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

    configs = [
        triton.Config({"BLOCK_N": c.block_n, "BLOCK_K": c.block_k}, num_warps=c.num_warps, num_stages=c.num_stages)
        for c in TUNING_CONFIGS
    ]
    return triton.autotune(configs=configs, key=["N", "K", "BLOCK_M"], warmup=5, rep=20)(_kernel())


def skinny_linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, config: SkinnyConfig | None = None
) -> torch.Tensor:
    """x W^T (+ bias) for a 2-D x of at most SKINNY_MAX_ROWS rows, by the Triton kernel.

    With a `config` the kernel runs that block shape; without one Triton's autotuner picks one
    on first use of each weight shape (it times on a GPU, so the interpreter needs a config).
    """
    import triton

    rows, k = x.shape
    n = weight.shape[0]
    y = torch.empty(rows, n, dtype=x.dtype, device=x.device)
    fixed: dict[str, int] = {}
    if config is not None:
        fixed = {
            "BLOCK_N": config.block_n,
            "BLOCK_K": config.block_k,
            "num_warps": config.num_warps,
            "num_stages": config.num_stages,
        }
    kernel = _tuned_kernel() if config is None else _kernel()
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
def triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None


def skinny_supported(weight: torch.Tensor) -> bool:
    """Whether the kernel can run on this weight at all (CUDA, fp16/bf16, row-major, Triton)."""
    return weight.is_cuda and weight.dtype in _DTYPES and weight.is_contiguous() and triton_available()


def linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    skinny_rows: int = 0,
    config: SkinnyConfig | None = None,
) -> torch.Tensor:
    """F.linear, or the skinny kernel where x has 1 to `skinny_rows` rows (the projection's choice)
    and a CUDA graph is being captured: the choice was timed inside a graph, and launched one by
    one from Python a Triton kernel costs more host time than cuBLAS's (tens of µs against a few)."""
    # skinny_rows first: 0 for every projection by default, so the common call (an eager prefill
    # launches hundreds, host-bound at short prompts) pays one integer test.
    if (
        skinny_rows
        and x.dim() == 2
        and 0 < x.shape[0] <= skinny_rows
        and x.dtype == weight.dtype
        and x.is_contiguous()
        and x.is_cuda
        and torch.cuda.is_current_stream_capturing()
    ):
        return skinny_linear(x, weight, bias, config)
    return F.linear(x, weight, bias)

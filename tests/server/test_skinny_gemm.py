"""The decode projections' Triton kernel, run by Triton's interpreter on CPU (the GPU check runs it
compiled: bench/gemv.py)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tpserve.layers import skinny_gemm

from .triton_interpreter import run_interpreted

# (rows, N, K, (BLOCK_N, BLOCK_K), bias)
CASES = [
    (1, 64, 512, (8, 256), False),  # even blocks
    (3, 37, 1000, (8, 256), True),  # rows, N and K none a multiple of its block; a bias
    (4, 130, 96, (16, 512), False),  # K shorter than one block
    (2, 5, 300, (4, 512), True),
]

# Triton reads TRITON_INTERPRET when it is first imported, so the interpreted kernel runs in a
# process of its own; it prints, per case, the largest error against a float32 product.
CHECK = """
import json, sys
import torch
import torch.nn.functional as F
from tpserve.layers.skinny_gemm import SkinnyConfig, skinny_linear

results = []
for rows, n, k, blocks, bias in json.loads(sys.argv[1]):
    g = torch.Generator().manual_seed(rows * 1000 + n)
    x = torch.randn(rows, k, generator=g).to(torch.bfloat16)
    w = torch.randn(n, k, generator=g).to(torch.bfloat16)
    b = torch.randn(n, generator=g).to(torch.bfloat16) if bias else None
    got = skinny_linear(x, w, b, config=SkinnyConfig(*blocks, num_warps=4, num_stages=3))
    want = F.linear(x.float(), w.float(), b.float() if b is not None else None)
    # float32 accumulation, one rounding to bf16 at the end: within one bf16 step (2**-7 relative) of
    # the exact value (the interpreter's bf16 conversion truncates where the GPU's rounds to nearest)
    excess = ((got.float() - want).abs() - want.abs() * 2**-7 - 1e-3).max().item()
    results.append({"shape": list(got.shape), "dtype": str(got.dtype), "excess": excess})
print(json.dumps(results))
"""


def test_skinny_kernel_equals_a_float32_product() -> None:
    for (rows, n, _, _, _), result in zip(CASES, run_interpreted(CHECK, CASES), strict=True):
        assert result["shape"] == [rows, n] and result["dtype"] == "torch.bfloat16"
        assert result["excess"] <= 0, (rows, n, result)


def test_linear_takes_f_linear_beyond_the_projections_skinny_rows() -> None:
    x = torch.randn(2, 16, dtype=torch.bfloat16)
    weight = torch.randn(8, 16, dtype=torch.bfloat16)
    assert torch.equal(skinny_gemm.linear(x, weight), F.linear(x, weight))  # skinny_rows 0: never
    assert torch.equal(skinny_gemm.linear(x, weight, skinny_rows=1), F.linear(x, weight))
    assert not skinny_gemm.skinny_supported(weight)  # a CPU weight: never given skinny rows

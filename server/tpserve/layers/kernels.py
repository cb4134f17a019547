"""The choice between flashinfer's fused kernels and the torch reference ops."""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
from collections.abc import Iterator
from types import ModuleType

import torch
from torch import nn

# flashinfer's fused norm, rotary and activation kernels dispatch on these dtypes only.
FUSED_KERNEL_DTYPES = (torch.float16, torch.bfloat16)


def fused_kernels(device: torch.device, dtype: torch.dtype) -> ModuleType | None:
    """flashinfer, when its fused kernels can replace the torch reference ops for `dtype` on `device`.

    Each fused kernel (RMSNorm with the residual add, rotary, SiLU-and-multiply) does in one
    launch what takes several torch ops; at small decode batches those launches, not the bytes,
    dominate a step. TPSERVE_FUSED_KERNELS=0 keeps the torch ops (for comparisons).
    """
    if device.type != "cuda" or dtype not in FUSED_KERNEL_DTYPES or os.environ.get("TPSERVE_FUSED_KERNELS", "1") == "0":
        return None
    if importlib.util.find_spec("flashinfer") is None:
        return None
    return importlib.import_module("flashinfer")


@contextlib.contextmanager
def reference_ops(model: nn.Module) -> Iterator[None]:
    """Inside the block, `model` runs the torch reference ops instead of the fused kernels.

    For comparisons (benchmarks, GPU checks); graphs captured inside keep the reference ops.
    """
    fused = [(m, m.kernels) for m in model.modules() if getattr(m, "kernels", None) is not None]
    for module, _ in fused:
        setattr(module, "kernels", None)  # noqa: B010 (nn.Module's attributes are untyped)
    try:
        yield
    finally:
        for module, kernels in fused:
            setattr(module, "kernels", kernels)  # noqa: B010

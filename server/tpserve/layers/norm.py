"""RMSNorm, with the residual add folded in (flashinfer's fused kernel on CUDA)."""

from __future__ import annotations

import torch
from torch import nn

from .kernels import fused_kernels
from .weight_spec import WeightSpec


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float, dtype: torch.dtype, device: torch.device) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(size, dtype=dtype, device=device), requires_grad=False)
        self.kernels = fused_kernels(device, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """norm(x) over the last axis of x: [tokens, size] or, for q/k norms, [tokens, heads, size].

        The fused kernel also takes the per-head q/k slices of a fused QKV output as they are
        (strided rows and heads): one launch per norm instead of the reference's six.
        """
        if self.kernels is not None and (x.is_contiguous() or (x.dim() == 3 and x.stride(-1) == 1)):
            normed: torch.Tensor = self.kernels.norm.rmsnorm(x, self.weight, self.eps)
            return normed
        return self._reference(x)

    def norm_heads_in_place(self, x: torch.Tensor) -> torch.Tensor:
        """norm(x) for per-head q/k slices [tokens, heads, head_dim] of a fused QKV output.

        The fused kernel writes the result back into the QKV buffer (each element is read before
        it is written, by the same thread), so K and V stay side by side there and reach the KV
        cache in one indexed write; the reference returns a new tensor.
        """
        if self.kernels is not None and x.dim() == 3 and x.stride(-1) == 1:
            self.kernels.norm.rmsnorm(x, self.weight, self.eps, out=x)
            return x
        return self._reference(x)

    def add_and_norm(self, x: torch.Tensor, residual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(norm(x + residual), x + residual). The fused kernel updates x and residual in place."""
        if self.kernels is not None:
            self.kernels.norm.fused_add_rmsnorm(x, residual, self.weight, self.eps)
            return x, residual
        summed = x + residual
        return self._reference(summed), summed

    def _reference(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in float32 at least, as the reference implementations do.
        compute = torch.promote_types(x.dtype, torch.float32)
        h = x.to(compute)
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)

    def weight_specs(self, name: str) -> list[WeightSpec]:
        return [WeightSpec(name, self.weight)]

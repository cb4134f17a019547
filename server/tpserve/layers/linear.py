"""Column- and row-parallel linear layers: each rank holds a slice of the weight matrix."""

from __future__ import annotations

import torch
from torch import nn

from ..distributed.group import TPGroup
from .skinny_gemm import SkinnyConfig, linear
from .weight_spec import WeightSpec


def split_range(total: int, parts: int, index: int) -> tuple[int, int]:
    size = total // parts
    return index * size, size


class ColumnParallelLinear(nn.Module):
    """y = x W^T with W split by output rows; several checkpoint matrices can be fused into one.

    `segments` are (checkpoint-name-suffix, this-rank rows start, rows length) per fused part,
    e.g. q/k/v of one attention layer with their head slices.
    """

    def __init__(
        self,
        in_features: int,
        segments: list[tuple[str, int, int]],
        bias: bool,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        super().__init__()
        self.segments = segments
        out_features = sum(length for _, _, length in segments)
        self.weight = nn.Parameter(
            torch.empty(out_features, in_features, dtype=dtype, device=device), requires_grad=False
        )
        self.bias = (
            nn.Parameter(torch.zeros(out_features, dtype=dtype, device=device), requires_grad=False) if bias else None
        )
        # Rows up to which the skinny kernel runs this projection, and its block shape: set at
        # start-up by skinny_choice (0: cuBLAS always).
        self.skinny_rows = 0
        self.skinny_config: SkinnyConfig | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias, self.skinny_rows, self.skinny_config)

    def weight_specs(self, prefix: str) -> list[WeightSpec]:
        specs: list[WeightSpec] = []
        row = 0
        for suffix, start, length in self.segments:
            specs.append(WeightSpec(f"{prefix}.{suffix}.weight", self.weight[row : row + length], 0, start, length))
            if self.bias is not None:
                specs.append(WeightSpec(f"{prefix}.{suffix}.bias", self.bias[row : row + length], 0, start, length))
            row += length
        return specs


class RowParallelLinear(nn.Module):
    """y = sum over ranks of x_r W_r^T: W split by input columns, one all-reduce per call."""

    def __init__(
        self, in_features: int, out_features: int, group: TPGroup, dtype: torch.dtype, device: torch.device
    ) -> None:
        super().__init__()
        self.group = group
        self.in_start, self.in_local = split_range(in_features, group.world_size, group.rank)
        self.weight = nn.Parameter(
            torch.empty(out_features, self.in_local, dtype=dtype, device=device), requires_grad=False
        )
        self.skinny_rows = 0  # as in ColumnParallelLinear
        self.skinny_config: SkinnyConfig | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.group.all_reduce(linear(x, self.weight, None, self.skinny_rows, self.skinny_config))

    def weight_specs(self, prefix: str) -> list[WeightSpec]:
        return [WeightSpec(f"{prefix}.weight", self.weight, 1, self.in_start, self.in_local)]

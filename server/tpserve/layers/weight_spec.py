"""Which slice of which checkpoint tensor fills which part of a parameter."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class WeightSpec:
    """Copy `checkpoint[name]` sliced to [start, start+length) along `dim` into `target`.

    `dim` None means the tensor is replicated and copied whole.
    """

    name: str
    target: torch.Tensor
    dim: int | None = None
    start: int = 0
    length: int = 0

"""How far a result is from its reference, as the GPU checks and benchmarks report it."""

from __future__ import annotations

import torch


def relative_error(result: torch.Tensor, reference: torch.Tensor) -> float:
    """||result - reference|| / ||reference||, computed in float32."""
    reference = reference.float()
    return ((result.float() - reference).norm() / reference.norm()).item()

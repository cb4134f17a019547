"""Rotary position embedding, with Llama 3.x and linear rope scaling."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .kernels import fused_kernels

SUPPORTED_ROPE_TYPES = ("default", "llama3", "linear")


@dataclass(frozen=True)
class RopeConfig:
    theta: float
    rope_type: str = "default"
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192


def rope_inverse_frequencies(rope: RopeConfig, head_dim: int) -> torch.Tensor:
    inv_freq = 1.0 / (rope.theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    if rope.rope_type == "linear":
        return inv_freq / rope.factor
    if rope.rope_type != "llama3":
        return inv_freq
    # Llama 3.x: long wavelengths are slowed by `factor`, short ones kept, the band between
    # the two cut-offs interpolated smoothly.
    original = rope.original_max_position_embeddings
    wavelen = 2 * math.pi / inv_freq
    long_cutoff = original / rope.low_freq_factor
    short_cutoff = original / rope.high_freq_factor
    smooth = (original / wavelen - rope.low_freq_factor) / (rope.high_freq_factor - rope.low_freq_factor)
    interpolated = (1 - smooth) * inv_freq / rope.factor + smooth * inv_freq
    scaled = torch.where(wavelen > long_cutoff, inv_freq / rope.factor, inv_freq)
    in_band = (wavelen >= short_cutoff) & (wavelen <= long_cutoff)
    return torch.where(in_band, interpolated, scaled)


class RotaryEmbedding(nn.Module):
    """Rotary position embedding on the half-split layout that HF checkpoints use."""

    cos: torch.Tensor
    sin: torch.Tensor
    cos_sin: torch.Tensor

    def __init__(
        self, rope: RopeConfig, head_dim: int, max_positions: int, dtype: torch.dtype, device: torch.device
    ) -> None:
        super().__init__()
        inv_freq = rope_inverse_frequencies(rope, head_dim)
        positions = torch.arange(max_positions, dtype=torch.float32)
        freqs = torch.outer(positions, inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        self.register_buffer("cos", emb.cos().to(dtype=dtype, device=device), persistent=False)
        self.register_buffer("sin", emb.sin().to(dtype=dtype, device=device), persistent=False)
        self.kernels = fused_kernels(device, dtype)
        if self.kernels is not None:  # the fused kernel's table: [positions, cos half | sin half], float32
            self.register_buffer("cos_sin", torch.cat((freqs.cos(), freqs.sin()), dim=-1).to(device), persistent=False)
        self.head_dim = head_dim

    @property
    def fused_table(self) -> torch.Tensor | None:
        """[positions, head_dim] float32, the cosines then the sines, while the fused kernels are on
        (an attention backend may then rotate inside its K/V store: attention/rope_store.py)."""
        return self.cos_sin if self.kernels is not None else None

    def forward(self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """q [tokens, heads, head_dim] and k [tokens, kv_heads, head_dim], rotated (maybe in place)."""
        if self.kernels is not None:
            tokens = q.shape[0]
            self.kernels.rope.apply_rope_with_cos_sin_cache_inplace(
                positions, q.view(tokens, -1), k.view(tokens, -1), self.head_dim, self.cos_sin, is_neox=True
            )
            return q, k
        cos = self.cos[positions].unsqueeze(1)  # [tokens, 1, head_dim]
        sin = self.sin[positions].unsqueeze(1)
        return _rotate(q, cos, sin), _rotate(k, cos, sin)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin

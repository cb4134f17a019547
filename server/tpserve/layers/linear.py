"""Tensor-parallel building blocks. Each module holds only this rank's shard.

Every module lists, through `weight_specs`, which slice of which checkpoint tensor fills which
part of its parameters, so the loader can read exactly this rank's bytes and nothing more.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from types import ModuleType

import torch
import torch.nn.functional as F
from torch import nn

from .config import RopeConfig
from .distributed import TPGroup


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


def fused_kernels(device: torch.device) -> ModuleType | None:
    """flashinfer, when its fused kernels can replace the torch reference ops on `device`.

    Each fused kernel (RMSNorm with the residual add, rotary, SiLU-and-multiply) does in one
    launch what takes several torch ops; at small decode batches those launches, not the bytes,
    dominate a step. TPSERVE_FUSED_KERNELS=0 keeps the torch ops (for comparisons).
    """
    if device.type != "cuda" or os.environ.get("TPSERVE_FUSED_KERNELS", "1") == "0":
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
        module.kernels = None
    try:
        yield
    finally:
        for module, kernels in fused:
            module.kernels = kernels


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
        self.weight = nn.Parameter(torch.empty(out_features, in_features, dtype=dtype, device=device), requires_grad=False)
        self.bias = (
            nn.Parameter(torch.zeros(out_features, dtype=dtype, device=device), requires_grad=False) if bias else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)

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
        self.weight = nn.Parameter(torch.empty(out_features, self.in_local, dtype=dtype, device=device), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.group.all_reduce(F.linear(x, self.weight))

    def weight_specs(self, prefix: str) -> list[WeightSpec]:
        return [WeightSpec(f"{prefix}.weight", self.weight, 1, self.in_start, self.in_local)]


class VocabParallelEmbedding(nn.Module):
    """Embedding rows split by vocabulary range; the vocab is padded to a multiple of tp."""

    def __init__(
        self, vocab_size: int, hidden_size: int, group: TPGroup, dtype: torch.dtype, device: torch.device
    ) -> None:
        super().__init__()
        self.group = group
        self.vocab_size = vocab_size
        self.rows_per_rank = math.ceil(vocab_size / group.world_size)
        self.vocab_start = group.rank * self.rows_per_rank
        self.vocab_end = min(self.vocab_start + self.rows_per_rank, vocab_size)
        self.weight = nn.Parameter(
            torch.zeros(self.rows_per_rank, hidden_size, dtype=dtype, device=device), requires_grad=False
        )

    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        if self.group.world_size == 1:
            return F.embedding(token_ids, self.weight)
        local = (token_ids >= self.vocab_start) & (token_ids < self.vocab_end)
        local_ids = torch.where(local, token_ids - self.vocab_start, 0)
        out = F.embedding(local_ids, self.weight) * local.unsqueeze(-1).to(self.weight.dtype)
        return self.group.all_reduce(out)

    def weight_specs(self, name: str) -> list[WeightSpec]:
        rows = self.vocab_end - self.vocab_start
        return [WeightSpec(name, self.weight[:rows], 0, self.vocab_start, rows)]


class ParallelLMHead(nn.Module):
    """Logits for this rank's vocabulary range, gathered into full-vocabulary logits."""

    def __init__(self, embedding: VocabParallelEmbedding, tied: bool) -> None:
        super().__init__()
        self.embedding = embedding
        self.tied = tied
        self.weight = embedding.weight if tied else nn.Parameter(torch.zeros_like(embedding.weight), requires_grad=False)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = self.embedding.group.gather_last_dim(F.linear(hidden, self.weight))
        return logits[..., : self.embedding.vocab_size]

    def weight_specs(self, name: str) -> list[WeightSpec]:
        if self.tied:
            return []
        rows = self.embedding.vocab_end - self.embedding.vocab_start
        return [WeightSpec(name, self.weight[:rows], 0, self.embedding.vocab_start, rows)]


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float, dtype: torch.dtype, device: torch.device) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(size, dtype=dtype, device=device), requires_grad=False)
        self.kernels = fused_kernels(device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """norm(x) over the last axis of x: [tokens, size] or, for q/k norms, [tokens, heads, size].

        The fused kernel also takes the per-head q/k slices of a fused QKV output as they are
        (strided rows and heads): one launch per norm instead of the reference's six.
        """
        if self.kernels is not None and (x.is_contiguous() or (x.dim() == 3 and x.stride(-1) == 1)):
            return self.kernels.norm.rmsnorm(x, self.weight, self.eps)
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

    def __init__(self, rope: RopeConfig, head_dim: int, max_positions: int, dtype: torch.dtype, device: torch.device) -> None:
        super().__init__()
        inv_freq = rope_inverse_frequencies(rope, head_dim)
        positions = torch.arange(max_positions, dtype=torch.float32)
        freqs = torch.outer(positions, inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        self.register_buffer("cos", emb.cos().to(dtype=dtype, device=device), persistent=False)
        self.register_buffer("sin", emb.sin().to(dtype=dtype, device=device), persistent=False)
        self.kernels = fused_kernels(device)
        if self.kernels is not None:  # the fused kernel's table: [positions, cos half | sin half], float32
            self.register_buffer("cos_sin", torch.cat((freqs.cos(), freqs.sin()), dim=-1).to(device), persistent=False)
        self.head_dim = head_dim

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

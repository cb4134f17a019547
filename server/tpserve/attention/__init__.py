"""Attention backends behind one interface, chosen by name (`--attn`)."""

from __future__ import annotations

from typing import Callable

from ..config import ConfigError
from ..kv_cache import PagedKVCache
from .base import AttentionBackend, AttentionLayerShape

BackendFactory = Callable[[PagedKVCache, AttentionLayerShape], AttentionBackend]


def _torch_backend(cache: PagedKVCache, shape: AttentionLayerShape) -> AttentionBackend:
    from .torch_backend import TorchPagedAttention

    return TorchPagedAttention(cache, shape)


# Imported lazily so that the CPU path never imports GPU-only packages.
BACKENDS: dict[str, BackendFactory] = {"torch": _torch_backend}


def create_backend(name: str, cache: PagedKVCache, shape: AttentionLayerShape) -> AttentionBackend:
    if name not in BACKENDS:
        raise ConfigError(f"--attn {name!r}: unknown attention backend (available: {', '.join(BACKENDS)})")
    return BACKENDS[name](cache, shape)


__all__ = ["AttentionBackend", "AttentionLayerShape", "create_backend", "BACKENDS"]

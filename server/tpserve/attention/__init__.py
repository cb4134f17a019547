"""Attention backends behind one interface, chosen by name (`--attn`): torch and flashinfer.

Imports `kvcache` and `core` only; GPU-only packages are imported lazily.
"""

from __future__ import annotations

from collections.abc import Callable

from ..core.errors import ConfigError
from ..kvcache.paged_cache import PagedKVCache
from .base import AttentionBackend, AttentionLayerShape

BackendFactory = Callable[[PagedKVCache, AttentionLayerShape], AttentionBackend]


def _torch_backend(cache: PagedKVCache, shape: AttentionLayerShape) -> AttentionBackend:
    from .torch_backend import TorchPagedAttention

    return TorchPagedAttention(cache, shape)


def _flashinfer_backend(cache: PagedKVCache, shape: AttentionLayerShape) -> AttentionBackend:
    from .flashinfer_backend import FlashInferPagedAttention

    return FlashInferPagedAttention(cache, shape)


# Imported lazily so that the CPU path never imports GPU-only packages.
BACKENDS: dict[str, BackendFactory] = {"torch": _torch_backend, "fi": _flashinfer_backend}
GPU_ONLY_BACKENDS = {"fi"}


def check_backend(name: str, device: str) -> None:
    """Refuse an unusable --attn before any process starts."""
    import importlib.util

    for part in name.split(","):
        if part not in BACKENDS:
            raise ConfigError(f"--attn {name!r}: unknown attention backend {part!r} (available: {', '.join(BACKENDS)})")
        if part in GPU_ONLY_BACKENDS and device != "cuda":
            raise ConfigError(f"--attn {part} needs --device cuda")
        if part == "fi" and importlib.util.find_spec("flashinfer") is None:
            raise ConfigError("--attn fi needs flashinfer-python (pip install 'tpserve[gpu]'), or use --attn torch")


def create_backend(name: str, cache: PagedKVCache, shape: AttentionLayerShape) -> AttentionBackend:
    if "," in name:
        from .split import PrefillDecodeSplit

        prefill, decode = name.split(",")
        return PrefillDecodeSplit(BACKENDS[prefill](cache, shape), BACKENDS[decode](cache, shape))
    if name not in BACKENDS:
        raise ConfigError(f"--attn {name!r}: unknown attention backend (available: {', '.join(BACKENDS)})")
    return BACKENDS[name](cache, shape)


__all__ = ["BACKENDS", "AttentionBackend", "AttentionLayerShape", "check_backend", "create_backend"]

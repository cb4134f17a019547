"""GGUF checkpoints: the config from the file's metadata and this rank's slices of its tensors.

A GGUF file stores each tensor row by row in quantized blocks along its last axis. A rank
reads only the rows (and, for row-parallel layers, the blocks of columns) of its own slice,
dequantizes them with the `gguf` package, and copies them into its parameters: no rank ever
dequantizes a whole split tensor.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import torch

from ..core.errors import ConfigError
from ..layers.weight_spec import WeightSpec
from .weights import ProgressCallback

# GGUF architecture name -> the Hugging Face architecture tpserve builds for it. llama.cpp
# converts Mistral checkpoints to the "llama" architecture.
GGUF_ARCHITECTURES: dict[str, str] = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
}

Q = gguf.GGMLQuantizationType
SUPPORTED_TYPES: frozenset[gguf.GGMLQuantizationType] = frozenset(
    {Q.F32, Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q2_K, Q.Q3_K, Q.Q4_K, Q.Q5_K, Q.Q6_K}
)

# llama.cpp's converter reorders the rows of each q and k head of these architectures so that
# its interleaved rotary applies; the rows go back to Hugging Face's half-split order here.
INTERLEAVED_QK_ARCHITECTURES = frozenset({"llama"})


def gguf_architecture(reader: gguf.GGUFReader, path: Path) -> str:
    """The file's `general.architecture`, refused unless tpserve serves it."""
    field = reader.get_field("general.architecture")
    if field is None:
        raise ConfigError(f"{path}: no general.architecture in the GGUF metadata")
    name = str(field.contents())
    if name not in GGUF_ARCHITECTURES:
        supported = ", ".join(sorted(GGUF_ARCHITECTURES))
        raise ConfigError(f"{path}: unsupported GGUF architecture {name!r} (supported: {supported})")
    return name


def gguf_config_dict(path: Path) -> dict[str, Any]:
    """A config.json-shaped dict from the file's metadata (the keys llama.cpp's converter writes)."""
    reader = _open(path)
    arch = gguf_architecture(reader, path)

    def field(key: str, default: Any = None) -> Any:
        found = reader.get_field(key)
        return default if found is None else found.contents()

    def required(key: str) -> Any:
        value = field(key)
        if value is None:
            raise ConfigError(f"{path}: GGUF metadata lacks {key}")
        return value

    hidden = int(required(f"{arch}.embedding_length"))
    heads = int(required(f"{arch}.attention.head_count"))
    scaling = field(f"{arch}.rope.scaling.type", "none")
    if scaling not in ("none", "linear"):
        raise ConfigError(f"{path}: rope scaling {scaling!r} is not supported for GGUF checkpoints (only linear)")
    rope: dict[str, Any] = {"rope_theta": float(field(f"{arch}.rope.freq_base", 10000.0)), "rope_type": "default"}
    if scaling == "linear":
        rope.update(rope_type="linear", factor=float(required(f"{arch}.rope.scaling.factor")))
    if any(t.name == "rope_freqs.weight" for t in reader.tensors):
        raise ConfigError(f"{path}: Llama 3.x rope scaling (the rope_freqs tensor) is not supported for GGUF yet")
    tokens = reader.get_field("tokenizer.ggml.tokens")
    eos = field("tokenizer.ggml.eos_token_id")
    return {
        "architectures": [GGUF_ARCHITECTURES[arch]],
        "vocab_size": int(field(f"{arch}.vocab_size") or (len(tokens.data) if tokens else 0)),
        "hidden_size": hidden,
        "intermediate_size": int(required(f"{arch}.feed_forward_length")),
        "num_hidden_layers": int(required(f"{arch}.block_count")),
        "num_attention_heads": heads,
        "num_key_value_heads": int(field(f"{arch}.attention.head_count_kv", heads)),
        "head_dim": int(field(f"{arch}.attention.key_length", hidden // heads)),
        "rms_norm_eps": float(field(f"{arch}.attention.layer_norm_rms_epsilon", 1e-6)),
        "max_position_embeddings": int(field(f"{arch}.context_length", 4096)),
        # llama.cpp's converter leaves out output.weight when the LM head is the embedding.
        "tie_word_embeddings": not any(t.name == "output.weight" for t in reader.tensors),
        "rope_parameters": rope,
        "eos_token_id": None if eos is None else int(eos),
    }


def _open(path: Path) -> gguf.GGUFReader:
    try:
        stat = path.stat()
        return _parsed(path.resolve(), stat.st_mtime_ns, stat.st_size)
    except (ValueError, OSError) as exc:
        raise ConfigError(f"{path}: not a readable GGUF file ({exc})") from exc


# The reader parses every metadata field up front, the tokenizer's ~100k strings among them:
# seconds per parse on a small CPU, and a start-up reads the config, the tensor list and the
# tensors. One parse per file version (path, mtime, size) and process serves them all.
@functools.lru_cache(maxsize=4)
def _parsed(path: Path, mtime_ns: int, size: int) -> gguf.GGUFReader:
    return gguf.GGUFReader(path)  # memory-maps the file; tensors are read on access


@dataclass(frozen=True)
class _Tensor:
    name: str
    qtype: gguf.GGMLQuantizationType
    data: np.ndarray  # torch axis order; the last axis in bytes for quantized types


class GGUFCheckpoint:
    """One GGUF file, read through Hugging Face tensor names."""

    def __init__(self, path: Path, head_dim: int) -> None:
        self.path = path
        reader = _open(path)
        self.architecture = gguf_architecture(reader, path)
        self.head_dim = head_dim
        self.tensors = {t.name: _Tensor(t.name, t.tensor_type, t.data) for t in reader.tensors}
        block_count = reader.get_field(f"{self.architecture}.block_count")
        arch = {name: arch for arch, name in gguf.MODEL_ARCH_NAMES.items()}[self.architecture]
        self.names = gguf.get_tensor_name_map(arch, int(block_count.contents()) if block_count else 0)

    def check_tensor_types(self) -> None:
        for tensor in self.tensors.values():
            if tensor.qtype not in SUPPORTED_TYPES:
                supported = ", ".join(sorted(t.name for t in SUPPORTED_TYPES))
                raise ConfigError(
                    f"{self.path}: tensor {tensor.name} is quantized as {tensor.qtype.name}, which tpserve "
                    f"cannot dequantize (supported: {supported})"
                )

    def gguf_name(self, hf_name: str) -> str:
        name = self.names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None or name not in self.tensors:
            raise ConfigError(f"{self.path}: no GGUF tensor for {hf_name} (expected {name or 'a mapping'})")
        return name

    def read(self, spec: WeightSpec) -> torch.Tensor:
        """This rank's slice of `spec.name`, dequantized to float32."""
        name = self.gguf_name(spec.name)
        tensor = self.tensors[name]
        values = dequantize_slice(tensor.data, tensor.qtype, spec.dim, spec.start, spec.length)
        if self.architecture in INTERLEAVED_QK_ARCHITECTURES and name.endswith(("attn_q.weight", "attn_k.weight")):
            values = half_split_rows(values, self.head_dim)
        if not values.flags.writeable:  # F32 tensors come straight from the read-only file map
            values = values.copy()
        return torch.from_numpy(values)


def load_gguf(specs: list[WeightSpec], path: Path, head_dim: int, progress: ProgressCallback | None = None) -> None:
    """Fill every spec from the file; a tensor no spec consumes is an error (a feature we would drop)."""
    checkpoint = GGUFCheckpoint(path, head_dim)
    checkpoint.check_tensor_types()
    used = {checkpoint.gguf_name(spec.name) for spec in specs}
    unused = sorted(set(checkpoint.tensors) - used)
    if unused:
        shown = ", ".join(unused[:5]) + (f" and {len(unused) - 5} more" if len(unused) > 5 else "")
        raise ConfigError(f"{path}: tensors {shown} are not used by tpserve's {checkpoint.architecture} model")
    for done, spec in enumerate(specs, 1):
        values = checkpoint.read(spec)
        if tuple(values.shape) != tuple(spec.target.shape):
            raise ConfigError(
                f"{path}: tensor {checkpoint.gguf_name(spec.name)} gives this rank a slice of shape "
                f"{list(values.shape)}, the config expects {list(spec.target.shape)}"
            )
        spec.target.copy_(values)
        if progress is not None:
            progress(done, len(specs))


def dequantize_slice(
    data: np.ndarray, qtype: gguf.GGMLQuantizationType, dim: int | None, start: int, length: int
) -> np.ndarray:
    """`data[..., start:start+length]` along torch axis `dim` (None: all), dequantized.

    Only the rows of the slice are touched; along the last axis, only the quantized blocks that
    overlap the slice are decoded and the partial blocks at either end are trimmed afterwards.
    """
    raw = data.view(np.uint8)  # F32/F16/BF16 tensors come typed; quantized ones as bytes
    if dim is None:
        return gguf.quants.dequantize(np.ascontiguousarray(raw), qtype)
    if dim < raw.ndim - 1:
        rows = raw[(slice(None),) * dim + (slice(start, start + length),)]
        return gguf.quants.dequantize(np.ascontiguousarray(rows), qtype)
    block, type_size = gguf.GGML_QUANT_SIZES[qtype]
    first, last = start // block, math.ceil((start + length) / block)
    blocks = raw[..., first * type_size : last * type_size]
    values = gguf.quants.dequantize(np.ascontiguousarray(blocks), qtype)
    offset = start - first * block
    return values[..., offset : offset + length]


def half_split_rows(rows: np.ndarray, head_dim: int) -> np.ndarray:
    """Undo llama.cpp's per-head row interleave of q/k: [pairs, 2] -> [2, pairs] in every head."""
    shape = rows.shape
    per_head = rows.reshape(-1, head_dim // 2, 2, *shape[1:])
    return np.ascontiguousarray(per_head.swapaxes(1, 2)).reshape(shape)

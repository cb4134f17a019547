"""Model configuration read from a checkpoint, and how its heads split across ranks.

Every check that can fail on a model directory lives here, so a bad checkpoint is reported
once, in the launching process, with a message naming the cause.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..core.errors import ConfigError
from ..layers.rotary import SUPPORTED_ROPE_TYPES, RopeConfig


@dataclass(frozen=True)
class ModelFamily:
    """The small, named ways the supported decoder families differ from plain Llama."""

    name: str
    qkv_bias: bool = False  # Qwen2 adds a bias to the q/k/v projections
    qk_norm: bool = False  # Qwen3 RMS-normalises q and k per head before rotary


MODEL_FAMILIES: dict[str, ModelFamily] = {
    "LlamaForCausalLM": ModelFamily("llama"),
    "MistralForCausalLM": ModelFamily("mistral"),
    "Qwen2ForCausalLM": ModelFamily("qwen2", qkv_bias=True),
    "Qwen3ForCausalLM": ModelFamily("qwen3", qk_norm=True),
}


@dataclass(frozen=True)
class ModelConfig:
    architecture: str
    family: ModelFamily
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    max_position_embeddings: int
    tie_word_embeddings: bool
    rope: RopeConfig
    torch_dtype: str | None
    eos_token_ids: tuple[int, ...]

    @staticmethod
    def from_dir(model_dir: str | os.PathLike[str]) -> ModelConfig:
        path = Path(model_dir)
        if not path.is_dir():
            raise ConfigError(f"--model {model_dir}: not a directory")
        config_path = path / "config.json"
        if not config_path.is_file():
            raise ConfigError(f"--model {model_dir}: no config.json in the model directory")
        try:
            raw = json.loads(config_path.read_text())
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{config_path}: invalid JSON ({exc})") from exc
        return ModelConfig.from_dict(raw, source=str(config_path))

    @staticmethod
    def from_dict(raw: dict[str, Any], source: str = "config.json") -> ModelConfig:
        architectures = raw.get("architectures") or []
        if not architectures:
            raise ConfigError(f"{source}: 'architectures' is missing; cannot tell which model this is")
        architecture = architectures[0]
        quantization = raw.get("quantization_config")
        if quantization:
            method = quantization.get("quant_method", "unknown") if isinstance(quantization, dict) else quantization
            raise ConfigError(
                f"{source}: {method} quantized checkpoints are not supported yet (quantization_config); "
                "serve the unquantized checkpoint, or a GGUF file"
            )
        if architecture not in MODEL_FAMILIES:
            supported = ", ".join(sorted(MODEL_FAMILIES))
            raise ConfigError(f"{source}: unsupported architecture {architecture!r} (supported: {supported})")
        if raw.get("use_sliding_window") or (architecture == "MistralForCausalLM" and raw.get("sliding_window")):
            window = raw.get("sliding_window")
            if window and window < raw.get("max_position_embeddings", 0):
                raise ConfigError(f"{source}: sliding-window attention (window {window}) is not supported")
        num_heads = int(raw["num_attention_heads"])
        hidden_size = int(raw["hidden_size"])
        eos = raw.get("eos_token_id")
        eos_ids = tuple(eos) if isinstance(eos, list) else (() if eos is None else (int(eos),))
        return ModelConfig(
            architecture=architecture,
            family=MODEL_FAMILIES[architecture],
            vocab_size=int(raw["vocab_size"]),
            hidden_size=hidden_size,
            intermediate_size=int(raw["intermediate_size"]),
            num_layers=int(raw["num_hidden_layers"]),
            num_heads=num_heads,
            num_kv_heads=int(raw.get("num_key_value_heads") or num_heads),
            head_dim=int(raw.get("head_dim") or hidden_size // num_heads),
            rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
            max_position_embeddings=int(raw.get("max_position_embeddings", 4096)),
            tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
            rope=_parse_rope(raw, source),
            torch_dtype=raw.get("dtype") or raw.get("torch_dtype"),
            eos_token_ids=eos_ids,
        )


def _parse_rope(raw: dict[str, Any], source: str) -> RopeConfig:
    # transformers >= 5 writes `rope_parameters` (theta inside); older checkpoints write
    # `rope_theta` plus an optional `rope_scaling`. Real checkpoints come in both shapes.
    params = dict(raw.get("rope_parameters") or raw.get("rope_scaling") or {})
    theta = float(params.get("rope_theta", raw.get("rope_theta", 10000.0)))
    rope_type = params.get("rope_type") or params.get("type") or "default"
    if rope_type not in SUPPORTED_ROPE_TYPES:
        raise ConfigError(
            f"{source}: unsupported rope type {rope_type!r} (supported: {', '.join(SUPPORTED_ROPE_TYPES)})"
        )
    return RopeConfig(
        theta=theta,
        rope_type=rope_type,
        factor=float(params.get("factor", 1.0)),
        low_freq_factor=float(params.get("low_freq_factor", 1.0)),
        high_freq_factor=float(params.get("high_freq_factor", 4.0)),
        original_max_position_embeddings=int(params.get("original_max_position_embeddings", 8192)),
    )


@dataclass(frozen=True)
class ShardLayout:
    """How the attention heads of one model split across `tp` ranks."""

    tp: int
    num_heads_per_rank: int
    num_kv_heads_per_rank: int
    kv_replication: int  # how many ranks share one KV head (1 when KV heads are split)

    @staticmethod
    def for_model(config: ModelConfig, tp: int) -> ShardLayout:
        if tp < 1:
            raise ConfigError(f"--tp must be >= 1, got {tp}")
        if config.num_heads % tp:
            raise ConfigError(f"--tp {tp} does not divide the model's {config.num_heads} attention heads")
        if config.intermediate_size % tp:
            raise ConfigError(f"--tp {tp} does not divide the model's intermediate size {config.intermediate_size}")
        if config.num_kv_heads >= tp:
            if config.num_kv_heads % tp:
                raise ConfigError(f"--tp {tp} does not divide the model's {config.num_kv_heads} key/value heads")
            return ShardLayout(tp, config.num_heads // tp, config.num_kv_heads // tp, 1)
        # Fewer KV heads than ranks: each KV head is replicated on tp / num_kv_heads ranks.
        if tp % config.num_kv_heads:
            raise ConfigError(f"--tp {tp} is not a multiple of the model's {config.num_kv_heads} key/value heads")
        return ShardLayout(tp, config.num_heads // tp, 1, tp // config.num_kv_heads)

    def kv_head_offset(self, rank: int) -> int:
        """Index of this rank's first KV head in the full checkpoint."""
        if self.kv_replication == 1:
            return rank * self.num_kv_heads_per_rank
        return rank // self.kv_replication


DTYPES: dict[str, torch.dtype] = {
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "float32": torch.float32,
    "float64": torch.float64,  # reference-precision runs in tests
}


def resolve_dtype(requested: str, model: ModelConfig, device: str) -> torch.dtype:
    if requested != "auto":
        if requested not in DTYPES:
            raise ConfigError(f"--dtype {requested!r}: expected one of auto, {', '.join(DTYPES)}")
        return DTYPES[requested]
    if device == "cpu":
        return torch.float32  # half precision matmuls are slow and imprecise on CPU
    checkpoint_dtype = DTYPES.get(model.torch_dtype or "", torch.bfloat16)
    return torch.bfloat16 if checkpoint_dtype == torch.float32 else checkpoint_dtype

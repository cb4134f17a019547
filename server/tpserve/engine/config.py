"""The engine's configuration, validated before any process or collective starts.

Every check that can fail on a flag lives here so that a bad flag combination is reported
once, in the launching process, with a message naming the cause.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..attention import check_backend
from ..core.errors import ConfigError
from ..models.checkpoint import Checkpoint
from ..models.config import ModelConfig, ShardLayout, resolve_dtype
from .scheduler import SCHEDULE_POLICIES


@dataclass(frozen=True)
class EngineConfig:
    """Everything a rank needs to build its shard of the engine. Picklable, sent to every rank."""

    model_path: str
    tokenizer_path: str | None = None  # another tokenizer than the checkpoint's own
    model_commit: str | None = None  # a hub model's commit: node 0 publishes it for the other nodes
    tp: int = 1
    nnodes: int = 1
    node_rank: int = 0
    dist_init_addr: str = "127.0.0.1:0"
    device: str = "cpu"
    dtype: str = "auto"
    load_format: str = "auto"
    mem_fraction_static: float = 0.9
    max_prefill_length: int = 8192
    page_size: int = 16
    max_running_requests: int | None = None
    max_total_tokens: int | None = None
    context_length: int | None = None
    attention_backend: str = "torch"
    dist_timeout: float = 300.0
    seed: int = 0
    cuda_graph_max_bs: int = 256
    # Single-sequence prefill steps of up to this many tokens replay from CUDA graphs (0: off,
    # until a GPU run shows the gain; see prefill_graph.py).
    cuda_graph_max_prefill_tokens: int = 0
    disable_cuda_graph: bool = False
    disable_custom_all_reduce: bool = False
    enable_p2p_check: bool = False
    disable_radix_cache: bool = False
    disable_overlap_schedule: bool = False  # plan step N+1 while step N runs unless set
    schedule_policy: str = "lpm"  # waiting-queue order: lpm (longest cached prefix first) or fcfs
    max_prefill_streak: int = 1  # prefill steps in a row while running streams wait (1: alternate)

    @property
    def use_cuda_graph(self) -> bool:
        return self.device == "cuda" and not self.disable_cuda_graph

    @property
    def ranks_per_node(self) -> int:
        return self.tp // self.nnodes

    def validate(self) -> ModelConfig:
        """Check every flag against each other and the model; returns the parsed model config."""
        if self.nnodes < 1:
            raise ConfigError(f"--nnodes must be >= 1, got {self.nnodes}")
        if self.tp % self.nnodes:
            raise ConfigError(f"--tp {self.tp} is not divisible by --nnodes {self.nnodes}")
        if not 0 <= self.node_rank < self.nnodes:
            raise ConfigError(f"--node-rank {self.node_rank} must be in [0, --nnodes {self.nnodes})")
        if self.page_size < 1:
            raise ConfigError(f"--page-size must be >= 1, got {self.page_size}")
        if self.max_prefill_length < 1:
            raise ConfigError(f"--max-prefill-length must be >= 1, got {self.max_prefill_length}")
        if not 0.0 < self.mem_fraction_static <= 1.0:
            raise ConfigError(f"--mem-fraction-static must be in (0, 1], got {self.mem_fraction_static}")
        if self.load_format not in ("auto", "safetensors", "dummy"):
            raise ConfigError(f"--load-format {self.load_format!r}: expected auto or dummy")
        if self.device not in ("cpu", "cuda"):
            raise ConfigError(f"--device {self.device!r}: expected cuda or cpu")
        if self.device == "cuda":
            visible = torch.cuda.device_count()
            if self.ranks_per_node > visible:
                raise ConfigError(
                    f"--tp {self.tp} over --nnodes {self.nnodes} needs {self.ranks_per_node} GPUs "
                    f"on this node, but {visible} are visible"
                )
        check_backend(self.attention_backend, self.device)
        checkpoint = self.checkpoint()
        model = checkpoint.model_config()
        ShardLayout.for_model(model, self.tp)
        resolve_dtype(self.dtype, model, self.device)
        if self.load_format != "dummy":
            checkpoint.check_weights(model)
        if self.schedule_policy not in SCHEDULE_POLICIES:
            raise ConfigError(
                f"--schedule-policy {self.schedule_policy!r}: expected one of {', '.join(SCHEDULE_POLICIES)}"
            )
        if self.max_prefill_streak < 1:
            raise ConfigError(f"--max-prefill-streak must be >= 1, got {self.max_prefill_streak}")
        if self.cuda_graph_max_bs < 1:
            raise ConfigError(f"--cuda-graph-max-bs must be >= 1, got {self.cuda_graph_max_bs}")
        if self.cuda_graph_max_prefill_tokens < 0:
            raise ConfigError(f"--cuda-graph-max-prefill-tokens must be >= 0, got {self.cuda_graph_max_prefill_tokens}")
        if self.context_length is not None and self.context_length < 2:
            raise ConfigError(f"--context-length must be >= 2, got {self.context_length}")
        return model

    def checkpoint(self) -> Checkpoint:
        return Checkpoint.locate(self.model_path)

    def load_tokenizer(self) -> Any:
        return self.checkpoint().load_tokenizer(self.tokenizer_path)

    def max_model_len(self, model: ModelConfig) -> int:
        return self.context_length or model.max_position_embeddings

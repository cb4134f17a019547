"""One dense decoder covering Llama, Mistral, Qwen2 and Qwen3 (see `ModelFamily` for the switches)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..attention import AttentionBackend
from ..distributed.group import TPGroup
from ..layers.embedding import ParallelLMHead, VocabParallelEmbedding
from ..layers.kernels import fused_kernels
from ..layers.linear import ColumnParallelLinear, RowParallelLinear, split_range
from ..layers.norm import RMSNorm
from ..layers.rotary import RotaryEmbedding
from ..layers.weight_spec import WeightSpec
from .config import ModelConfig, ShardLayout


class Attention(nn.Module):
    def __init__(
        self,
        config: ModelConfig,
        layout: ShardLayout,
        group: TPGroup,
        layer: int,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        super().__init__()
        self.layer = layer
        self.num_heads = layout.num_heads_per_rank
        self.num_kv_heads = layout.num_kv_heads_per_rank
        self.head_dim = config.head_dim
        q_rows = self.num_heads * self.head_dim
        kv_rows = self.num_kv_heads * self.head_dim
        q_start = group.rank * q_rows
        kv_start = layout.kv_head_offset(group.rank) * self.head_dim
        self.qkv_proj = ColumnParallelLinear(
            config.hidden_size,
            [("q_proj", q_start, q_rows), ("k_proj", kv_start, kv_rows), ("v_proj", kv_start, kv_rows)],
            bias=config.family.qkv_bias,
            dtype=dtype,
            device=device,
        )
        self.o_proj = RowParallelLinear(config.num_heads * self.head_dim, config.hidden_size, group, dtype, device)
        self.q_norm = RMSNorm(self.head_dim, config.rms_norm_eps, dtype, device) if config.family.qk_norm else None
        self.k_norm = RMSNorm(self.head_dim, config.rms_norm_eps, dtype, device) if config.family.qk_norm else None
        self.split_sizes = [q_rows, kv_rows, kv_rows]

    def forward(
        self, hidden: torch.Tensor, positions: torch.Tensor, rotary: RotaryEmbedding, attention: AttentionBackend
    ) -> torch.Tensor:
        tokens = hidden.shape[0]
        q, k, v = self.qkv_proj(hidden).split(self.split_sizes, dim=-1)
        q = q.view(tokens, self.num_heads, self.head_dim)
        k = k.view(tokens, self.num_kv_heads, self.head_dim)
        v = v.view(tokens, self.num_kv_heads, self.head_dim)
        if self.q_norm is not None and self.k_norm is not None:
            q, k = self.q_norm.norm_heads_in_place(q), self.k_norm.norm_heads_in_place(k)
        out: torch.Tensor = self.o_proj(attention.rotate_and_attend(self.layer, q, k, v, positions, rotary))
        return out

    def weight_specs(self, prefix: str) -> list[WeightSpec]:
        specs = self.qkv_proj.weight_specs(prefix) + self.o_proj.weight_specs(f"{prefix}.o_proj")
        if self.q_norm is not None and self.k_norm is not None:
            specs += self.q_norm.weight_specs(f"{prefix}.q_norm.weight")
            specs += self.k_norm.weight_specs(f"{prefix}.k_norm.weight")
        return specs


class MLP(nn.Module):
    def __init__(self, config: ModelConfig, group: TPGroup, dtype: torch.dtype, device: torch.device) -> None:
        super().__init__()
        start, rows = split_range(config.intermediate_size, group.world_size, group.rank)
        self.gate_up_proj = ColumnParallelLinear(
            config.hidden_size,
            [("gate_proj", start, rows), ("up_proj", start, rows)],
            bias=False,
            dtype=dtype,
            device=device,
        )
        self.down_proj = RowParallelLinear(config.intermediate_size, config.hidden_size, group, dtype, device)
        self.local_rows = rows
        self.kernels = fused_kernels(device, dtype)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        gate_up = self.gate_up_proj(hidden)
        if self.kernels is not None:
            activated: torch.Tensor = self.kernels.activation.silu_and_mul(gate_up)
        else:
            gate, up = gate_up.split(self.local_rows, dim=-1)
            activated = F.silu(gate) * up
        out: torch.Tensor = self.down_proj(activated)
        return out

    def weight_specs(self, prefix: str) -> list[WeightSpec]:
        return self.gate_up_proj.weight_specs(prefix) + self.down_proj.weight_specs(f"{prefix}.down_proj")


class DecoderLayer(nn.Module):
    def __init__(
        self,
        config: ModelConfig,
        layout: ShardLayout,
        group: TPGroup,
        layer: int,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, dtype, device)
        self.self_attn = Attention(config, layout, group, layer, dtype, device)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, dtype, device)
        self.mlp = MLP(config, group, dtype, device)

    def forward(
        self,
        hidden: torch.Tensor,
        residual: torch.Tensor | None,
        positions: torch.Tensor,
        rotary: RotaryEmbedding,
        attention: AttentionBackend,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(this layer's MLP output, the residual stream before it); the caller adds the two.

        Deferring each residual add into the next norm lets one fused kernel do add + norm.
        """
        if residual is None:
            residual, hidden = hidden, self.input_layernorm(hidden)
        else:
            hidden, residual = self.input_layernorm.add_and_norm(hidden, residual)
        hidden = self.self_attn(hidden, positions, rotary, attention)
        hidden, residual = self.post_attention_layernorm.add_and_norm(hidden, residual)
        return self.mlp(hidden), residual

    def weight_specs(self, prefix: str) -> list[WeightSpec]:
        return (
            self.input_layernorm.weight_specs(f"{prefix}.input_layernorm.weight")
            + self.self_attn.weight_specs(f"{prefix}.self_attn")
            + self.post_attention_layernorm.weight_specs(f"{prefix}.post_attention_layernorm.weight")
            + self.mlp.weight_specs(f"{prefix}.mlp")
        )


class DecoderModel(nn.Module):
    def __init__(
        self, config: ModelConfig, group: TPGroup, max_positions: int, dtype: torch.dtype, device: torch.device
    ) -> None:
        super().__init__()
        layout = ShardLayout.for_model(config, group.world_size)
        self.config = config
        self.embed_tokens = VocabParallelEmbedding(config.vocab_size, config.hidden_size, group, dtype, device)
        self.layers = nn.ModuleList(
            DecoderLayer(config, layout, group, i, dtype, device) for i in range(config.num_layers)
        )
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps, dtype, device)
        self.lm_head = ParallelLMHead(self.embed_tokens, tied=config.tie_word_embeddings)
        self.rotary = RotaryEmbedding(config.rope, config.head_dim, max_positions, dtype, device)

    @torch.inference_mode()
    def forward(
        self,
        token_ids: torch.Tensor,
        positions: torch.Tensor,
        sample_indices: torch.Tensor,
        attention: AttentionBackend,
    ) -> torch.Tensor:
        """Logits [len(sample_indices), vocab] for the selected token positions on rank 0 (a
        follower gets its vocabulary slice's)."""
        hidden = self.embed_tokens(token_ids)
        residual: torch.Tensor | None = None
        for layer in self.layers:
            hidden, residual = layer(hidden, residual, positions, self.rotary, attention)
        assert residual is not None
        hidden, _ = self.norm.add_and_norm(hidden[sample_indices], residual[sample_indices])
        logits: torch.Tensor = self.lm_head(hidden)
        return logits

    def weight_specs(self) -> list[WeightSpec]:
        specs = self.embed_tokens.weight_specs("model.embed_tokens.weight")
        for i, layer in enumerate(self.layers):
            assert isinstance(layer, DecoderLayer)  # nn.ModuleList hands out plain Modules
            specs += layer.weight_specs(f"model.layers.{i}")
        specs += self.norm.weight_specs("model.norm.weight")
        specs += self.lm_head.weight_specs("lm_head.weight")
        return specs

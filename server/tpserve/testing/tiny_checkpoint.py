"""Build tiny Hugging Face checkpoints offline, for tests and the demo.

Each checkpoint is a real HF directory written by transformers itself (config.json, random
weights as safetensors) plus a byte-level BPE tokenizer trained in-process, with a chat
template, that `AutoTokenizer.from_pretrained` loads.

    python -m tpserve.testing.tiny_checkpoint OUT_DIR [--family llama]
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Tensor parallelism splits every layer of a model across several GPUs.",
    "Each rank holds a slice of the attention heads and of the MLP.",
    "Hello, world! How are you today? I am fine, thank you.",
    "Kubernetes runs pods; an operator reconciles custom resources.",
    "Once upon a time there was a small language model that could count: one, two, three, four, five.",
    "def add(a, b):\n    return a + b\n",
    "Paris is the capital of France. Berlin is the capital of Germany.",
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20",
]


@dataclass(frozen=True)
class TinySpec:
    family: str = "llama"
    vocab_size: int = 384
    hidden_size: int = 64
    intermediate_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    max_position_embeddings: int = 256
    tie_word_embeddings: bool = False
    shards: int = 1  # >1 writes several safetensors files and an index
    init_std: float = 0.2  # wide enough that greedy argmax is rarely a near-tie
    seed: int = 0
    head_dim: int | None = None  # None: hidden_size / num_heads
    llama3_rope: bool = True  # Llama's rope scaling (GGUF files keep plain rope: set False for them)


def _config_kwargs(spec: TinySpec, eos_id: int, bos_id: int) -> dict[str, Any]:
    common: dict[str, Any] = dict(
        vocab_size=spec.vocab_size,
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_kv_heads,
        max_position_embeddings=spec.max_position_embeddings,
        tie_word_embeddings=spec.tie_word_embeddings,
        initializer_range=spec.init_std,
        rms_norm_eps=1e-6,
        eos_token_id=eos_id,
        bos_token_id=bos_id,
    )
    if spec.family == "llama" and spec.llama3_rope:
        # Llama 3.x rope scaling, with cut-offs that put some frequencies in each band.
        common["rope_scaling"] = {
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64,
        }
        common["rope_theta"] = 500000.0
    elif spec.family == "mistral":
        common["sliding_window"] = None
    elif spec.family == "qwen2":
        common["use_sliding_window"] = False
    if spec.head_dim is not None or spec.family == "qwen3":  # Qwen3's config default is 128
        common["head_dim"] = spec.head_dim or spec.hidden_size // spec.num_heads
    return common


def _config_class(family: str) -> Any:
    import transformers

    classes = {
        "llama": transformers.LlamaConfig,
        "mistral": transformers.MistralConfig,
        "qwen2": transformers.Qwen2Config,
        "qwen3": transformers.Qwen3Config,
    }
    if family not in classes:
        raise ValueError(f"unknown family {family!r}; expected one of {', '.join(classes)}")
    return classes[family]


def train_tokenizer(out_dir: Path, vocab_size: int) -> tuple[int, int]:
    """Train and save a byte-level BPE tokenizer; returns (bos_id, eos_id)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(CORPUS * 4, trainer=trainer)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<|endoftext|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        chat_template=CHAT_TEMPLATE,
    )
    wrapped.save_pretrained(str(out_dir))
    pad_id, eos_id = tokenizer.token_to_id("<|endoftext|>"), tokenizer.token_to_id("<|im_end|>")
    assert pad_id is not None and eos_id is not None, "the trainer keeps every special token"
    return pad_id, eos_id


def build_tiny_checkpoint(out_dir: str | Path, spec: TinySpec = TinySpec()) -> Path:
    import torch
    from transformers import AutoModelForCausalLM

    path = Path(out_dir)
    path.mkdir(parents=True, exist_ok=True)
    bos_id, eos_id = train_tokenizer(path, spec.vocab_size)
    config = _config_class(spec.family)(**_config_kwargs(spec, eos_id, bos_id))
    torch.manual_seed(spec.seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():
        # Norm weights away from 1 so that a missed or misplaced norm shows up in the logits.
        for name, param in model.named_parameters():
            if "norm" in name:
                param.uniform_(0.5, 1.5)
            elif name.endswith("bias"):
                param.normal_(0.0, spec.init_std)
    total_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    shard_size = total_bytes // spec.shards + 1 if spec.shards > 1 else "10GB"
    model.save_pretrained(str(path), max_shard_size=shard_size)
    # Make sure the architecture is recorded the way hub checkpoints record it.
    config_path = path / "config.json"
    raw = json.loads(config_path.read_text())
    raw.setdefault("architectures", [type(model).__name__])
    config_path.write_text(json.dumps(raw, indent=2))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir")
    parser.add_argument("--family", default="llama", choices=["llama", "mistral", "qwen2", "qwen3"])
    parser.add_argument("--shards", type=int, default=1)
    args = parser.parse_args()
    path = build_tiny_checkpoint(args.out_dir, TinySpec(family=args.family, shards=args.shards))
    print(path)


if __name__ == "__main__":
    main()

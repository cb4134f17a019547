"""Convert a tiny Hugging Face checkpoint into a GGUF file the way llama.cpp's converter does.

Metadata (architecture, sizes, rope base, tokenizer vocabulary, merges, special tokens and chat
template), tensors renamed to GGUF names, q/k rows of the "llama" architecture interleaved for
llama.cpp's rotary, 2-D weights quantized with the `gguf` package, norms kept in F32.

    python -m tpserve.testing.tiny_gguf HF_DIR OUT.gguf [--type Q8_0]
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import gguf
import numpy as np

GGUF_ARCHITECTURE_OF = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2", "qwen3": "qwen3"}


def interleave_rows(rows: np.ndarray, head_dim: int) -> np.ndarray:
    """llama.cpp's q/k permutation: per head, rows [2, pairs] -> [pairs, 2]."""
    shape = rows.shape
    per_head = rows.reshape(-1, 2, head_dim // 2, *shape[1:])
    return np.ascontiguousarray(per_head.swapaxes(1, 2)).reshape(shape)


def _add_tokenizer(writer: gguf.GGUFWriter, hf_dir: Path) -> None:
    tokenizer = json.loads((hf_dir / "tokenizer.json").read_text())
    vocab: dict[str, int] = tokenizer["model"]["vocab"]
    added = {t["content"]: t["id"] for t in tokenizer.get("added_tokens", [])}
    by_id = {i: token for token, i in {**vocab, **added}.items()}
    tokens = [by_id[i] for i in range(len(by_id))]
    merges = [m if isinstance(m, str) else " ".join(m) for m in tokenizer["model"]["merges"]]
    types = [gguf.TokenType.CONTROL if token in added else gguf.TokenType.NORMAL for token in tokens]
    config = json.loads((hf_dir / "tokenizer_config.json").read_text())
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(by_id_of(tokens, config["bos_token"]))
    writer.add_eos_token_id(by_id_of(tokens, config["eos_token"]))
    writer.add_pad_token_id(by_id_of(tokens, config["pad_token"]))
    writer.add_add_bos_token(False)
    template = config.get("chat_template")
    if template is None and (hf_dir / "chat_template.jinja").is_file():
        template = (hf_dir / "chat_template.jinja").read_text()
    if template:
        writer.add_chat_template(template)


def by_id_of(tokens: list[str], token: Any) -> int:
    content = token["content"] if isinstance(token, dict) else token
    return tokens.index(content)


def write_tiny_gguf(
    hf_dir: str | Path,
    out_file: str | Path,
    weight_type: gguf.GGMLQuantizationType = gguf.GGMLQuantizationType.Q8_0,
    tensor_types: Mapping[str, gguf.GGMLQuantizationType] | None = None,
    extra_tensors: Mapping[str, np.ndarray] | None = None,
) -> Path:
    """Write `hf_dir` as one GGUF file; 2-D weights as `weight_type`, 1-D tensors as F32.

    `tensor_types` gives some GGUF tensors another type: one the `gguf` package cannot quantize
    is written as zero bytes (for tests of files tpserve must refuse). `extra_tensors` adds
    tensors no model uses.
    """
    from safetensors.numpy import load_file

    hf_dir, out_file = Path(hf_dir), Path(out_file)
    config = json.loads((hf_dir / "config.json").read_text())
    if (config.get("rope_scaling") or config.get("rope_parameters") or {}).get("rope_type", "default") != "default":
        raise ValueError("GGUF keeps rope scaling as a rope_freqs tensor; convert a checkpoint with plain rope")
    architecture = GGUF_ARCHITECTURE_OF[config["model_type"]]
    heads, hidden = config["num_attention_heads"], config["hidden_size"]
    head_dim = config.get("head_dim") or hidden // heads
    rope = config.get("rope_parameters") or {}
    writer = gguf.GGUFWriter(str(out_file), architecture)
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(hidden)
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(config["num_key_value_heads"])
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    writer.add_rope_freq_base(float(rope.get("rope_theta", config.get("rope_theta", 10000.0))))
    writer.add_vocab_size(config["vocab_size"])
    _add_tokenizer(writer, hf_dir)

    arch = {name: arch for arch, name in gguf.MODEL_ARCH_NAMES.items()}[architecture]
    names = gguf.get_tensor_name_map(arch, config["num_hidden_layers"])
    tensors: dict[str, np.ndarray] = {}
    for file in sorted(hf_dir.glob("*.safetensors")):
        tensors.update(load_file(str(file)))
    for hf_name, values in tensors.items():
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise ValueError(f"no GGUF name for {hf_name}")
        values = values.astype(np.float32)
        if architecture == "llama" and name.endswith(("attn_q.weight", "attn_k.weight")):
            values = interleave_rows(values, head_dim)
        qtype = (tensor_types or {}).get(name, weight_type)
        if values.ndim == 2 and values.shape[-1] % gguf.GGML_QUANT_SIZES[qtype][0] == 0:
            writer.add_tensor(name, _quantized(values, qtype), raw_dtype=qtype)
        else:
            writer.add_tensor(name, values)
    for name, values in (extra_tensors or {}).items():
        writer.add_tensor(name, values)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out_file


def _quantized(values: np.ndarray, qtype: gguf.GGMLQuantizationType) -> np.ndarray:
    try:
        return gguf.quants.quantize(values, qtype)
    except NotImplementedError:
        shape = gguf.quants.quant_shape_to_byte_shape(values.shape, qtype)
        return np.zeros(shape, dtype=np.uint8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("hf_dir")
    parser.add_argument("out_file")
    parser.add_argument("--type", default="Q8_0", choices=[t.name for t in gguf.GGMLQuantizationType])
    args = parser.parse_args()
    print(write_tiny_gguf(args.hf_dir, args.out_file, gguf.GGMLQuantizationType[args.type]))


if __name__ == "__main__":
    main()

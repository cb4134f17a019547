"""Model directories, architectures, tp checks, and per-rank sliced weight loading."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from tpserve import LLM, ConfigError, EngineConfig, EngineError, SamplingParams
from tpserve.distributed.group import TPGroup
from tpserve.models.config import ModelConfig
from tpserve.models.decoder import DecoderModel
from tpserve.models.weights import checkpoint_files, load_safetensors


def test_missing_config_json_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"no config\.json"):
        EngineConfig(model_path=str(tmp_path)).validate()


def test_unsupported_architecture_is_named(tiny_checkpoint, tmp_path: Path) -> None:
    model_dir = tmp_path / "gpt2ish"
    shutil.copytree(tiny_checkpoint("llama"), model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    config["architectures"] = ["GPT2LMHeadModel"]
    (model_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="unsupported architecture 'GPT2LMHeadModel'"):
        LLM(str(model_dir))


def test_tp_not_dividing_heads_is_refused(tiny_checkpoint) -> None:
    with pytest.raises(ConfigError, match="--tp 3 does not divide the model's 4 attention heads"):
        LLM(str(tiny_checkpoint("llama")), tp=3)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"tp": 4, "nnodes": 3}, "not divisible by --nnodes"),
        ({"tp": 2, "nnodes": 2, "node_rank": 2}, "--node-rank 2"),
        ({"page_size": 0}, "--page-size"),
        ({"dtype": "int8"}, "--dtype 'int8'"),
    ],
)
def test_bad_flag_combinations_are_named(tiny_checkpoint, flags: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        EngineConfig(model_path=str(tiny_checkpoint("llama")), **flags).validate()


def test_each_rank_loads_only_its_slice(tiny_checkpoint) -> None:
    """Rank 1 of 2 holds the second half of every split tensor, read straight from the files."""
    path = tiny_checkpoint("qwen2")  # qkv bias: biases are sliced too
    config = ModelConfig.from_dir(path)
    group = TPGroup(rank=1, world_size=2, device=torch.device("cpu"))
    model = DecoderModel(config, group, 64, torch.float32, group.device)
    load_safetensors(model.weight_specs(), path)
    full: dict[str, torch.Tensor] = {}
    for file in set(checkpoint_files(path).values()):
        full.update(load_file(str(file)))
    attn = model.layers[0].self_attn
    q_rows = config.num_heads // 2 * config.head_dim
    kv_rows = config.num_kv_heads // 2 * config.head_dim
    q, k, _ = attn.qkv_proj.weight.split([q_rows, kv_rows, kv_rows])
    assert torch.equal(q, full["model.layers.0.self_attn.q_proj.weight"][q_rows:])
    assert torch.equal(k, full["model.layers.0.self_attn.k_proj.weight"][kv_rows:])
    assert torch.equal(attn.qkv_proj.bias[:q_rows], full["model.layers.0.self_attn.q_proj.bias"][q_rows:])
    half = config.hidden_size // 2
    assert torch.equal(attn.o_proj.weight, full["model.layers.0.self_attn.o_proj.weight"][:, half:])
    vocab_half = config.vocab_size // 2
    assert model.embed_tokens.weight.shape[0] == vocab_half
    assert torch.equal(model.embed_tokens.weight, full["model.embed_tokens.weight"][vocab_half:])


def test_checkpoint_with_wrong_shapes_is_refused(tiny_checkpoint, tmp_path: Path) -> None:
    model_dir = tmp_path / "wrong"
    shutil.copytree(tiny_checkpoint("mistral"), model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    config["intermediate_size"] = 256
    (model_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(Exception, match="does not match the config"):
        LLM(str(model_dir))


def test_dummy_weights_generate_without_files(tmp_path: Path, tiny_checkpoint) -> None:
    model_dir = tmp_path / "config-only"
    model_dir.mkdir()
    shutil.copy(tiny_checkpoint("qwen3") / "config.json", model_dir / "config.json")
    with LLM(str(model_dir), tp=2, load_format="dummy") as llm:
        out = llm.generate([[1, 2, 3, 4]], SamplingParams(max_tokens=5, temperature=0, ignore_eos=True))[0]
    assert len(out.token_ids) == 5
    assert all(0 <= t < llm.model_config.vocab_size for t in out.token_ids)


def test_prefill_decode_backend_pair_matches_transformers(tiny_checkpoint) -> None:
    from .reference import hf_greedy

    path = tiny_checkpoint("qwen2")
    prompt = list(range(40, 75))
    with LLM(str(path), tp=1, attention_backend="torch,torch", max_prefill_length=8) as llm:
        out = llm.generate([prompt], SamplingParams(max_tokens=10, temperature=0, ignore_eos=True))[0]
    assert out.token_ids == hf_greedy(path, prompt, 10)


def test_tp_not_dividing_the_intermediate_size_is_refused(tiny_checkpoint, tmp_path: Path) -> None:
    model_dir = tmp_path / "odd-mlp"
    shutil.copytree(tiny_checkpoint("llama"), model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    config["intermediate_size"] = 130  # not divisible by 4: a silent wrong slice otherwise
    (model_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="--tp 4 does not divide the model's intermediate size 130"):
        EngineConfig(model_path=str(model_dir), tp=4).validate()


def test_quantized_checkpoints_are_refused_by_method(tiny_checkpoint, tmp_path: Path) -> None:
    model_dir = tmp_path / "fp8"
    shutil.copytree(tiny_checkpoint("llama"), model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "fp8", "activation_scheme": "dynamic"}
    (model_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="fp8 quantized checkpoints are not supported"):
        EngineConfig(model_path=str(model_dir)).validate()


def test_a_checkpoint_tensor_no_parameter_uses_is_named(tiny_checkpoint, tmp_path: Path) -> None:
    model_dir = tmp_path / "extra"
    shutil.copytree(tiny_checkpoint("qwen2"), model_dir)
    tensors = load_file(str(model_dir / "model.safetensors"))
    tensors["model.layers.0.self_attn.o_proj.bias"] = torch.zeros(64)  # a bias Qwen2 does not have
    save_file(tensors, str(model_dir / "model.safetensors"))
    with pytest.raises(EngineError, match=r"model\.layers\.0\.self_attn\.o_proj\.bias are not used"):
        LLM(str(model_dir))

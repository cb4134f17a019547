"""GGUF checkpoints: tpserve's sliced dequantizing loader equals transformers' own GGUF loading.

Tiny checkpoints are converted to GGUF the way llama.cpp's converter does (q/k rows interleaved
for the llama architecture, 2-D weights quantized) by `tpserve.testing.tiny_gguf`; both engines
then read the same bytes.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch

from tpserve import LLM, ConfigError, EngineError, SamplingParams
from tpserve.models.checkpoint import Checkpoint
from tpserve.models.gguf import SUPPORTED_TYPES, dequantize_slice, half_split_rows
from tpserve.testing.tiny_checkpoint import TinySpec, build_tiny_checkpoint
from tpserve.testing.tiny_gguf import interleave_rows, write_tiny_gguf

from .reference import hf_greedy, hf_next_token_logprobs

Q = gguf.GGMLQuantizationType
PROMPTS = [[5, 6, 7, 8, 9, 10, 11, 12, 13], [20, 21], list(range(30, 70))]
NEW_TOKENS = 10

# GGUF keeps plain rope (no Llama 3 scaling); Qwen3's GGUF config in transformers assumes head_dim 128.
GGUF_SPECS = {
    "llama": TinySpec(family="llama", llama3_rope=False),
    "qwen2": TinySpec(family="qwen2"),
    "qwen3": TinySpec(family="qwen3", head_dim=128, tie_word_embeddings=True),
}
CASES = [("llama", Q.Q8_0, 1), ("llama", Q.Q4_1, 2), ("qwen2", Q.Q5_0, 2), ("qwen3", Q.Q4_0, 2), ("qwen2", Q.F16, 1)]


@pytest.fixture(scope="session")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("gguf")
    built: dict[tuple[str, Q], Path] = {}

    def build(family: str, qtype: Q) -> Path:
        if (family, qtype) not in built:
            hf_dir = root / family
            if not hf_dir.is_dir():
                build_tiny_checkpoint(hf_dir, GGUF_SPECS[family])
            out = root / f"{family}-{qtype.name}" / f"tiny-{family}.{qtype.name}.gguf"
            out.parent.mkdir()
            built[(family, qtype)] = write_tiny_gguf(hf_dir, out, qtype)
        return built[(family, qtype)]

    return build


@pytest.fixture(scope="module", params=CASES, ids=[f"{f}-{q.name}-tp{tp}" for f, q, tp in CASES])
def engine(request: pytest.FixtureRequest, tiny_gguf) -> Iterator[tuple[LLM, Path]]:
    family, qtype, tp = request.param
    path = tiny_gguf(family, qtype)
    with LLM(str(path), tp=tp) as llm:
        yield llm, path


def test_greedy_matches_transformers_on_the_same_gguf(engine: tuple[LLM, Path]) -> None:
    llm, path = engine
    outputs = llm.generate(PROMPTS, SamplingParams(max_tokens=NEW_TOKENS, temperature=0, ignore_eos=True))
    for prompt, out in zip(PROMPTS, outputs):
        assert out.token_ids == hf_greedy(path, prompt, NEW_TOKENS)


def test_first_step_logits_match_transformers_on_the_same_gguf(engine: tuple[LLM, Path]) -> None:
    llm, path = engine
    vocab = llm.model_config.vocab_size
    params = SamplingParams(max_tokens=1, temperature=0, ignore_eos=True, logprobs=vocab)
    for prompt, out in zip(PROMPTS, llm.generate(PROMPTS, params)):
        ours = torch.zeros(vocab, dtype=torch.float64)
        ids, values = zip(*out.logprobs[0].top)
        ours[list(ids)] = torch.tensor(values, dtype=torch.float64)
        torch.testing.assert_close(ours, hf_next_token_logprobs(path, prompt), rtol=0, atol=2e-5)


def test_tokenizer_and_chat_template_come_from_the_gguf(engine: tuple[LLM, Path]) -> None:
    llm, _ = engine
    assert llm.tokenizer is not None
    text = llm.tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    completion = llm.generate(["Hello, world!"], SamplingParams(max_tokens=4, temperature=0, ignore_eos=True))[0]
    assert completion.prompt_ids == llm.tokenizer.encode("Hello, world!")


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # NaN scales from random bytes
@pytest.mark.parametrize("qtype", sorted(SUPPORTED_TYPES, key=lambda q: q.name), ids=lambda q: q.name)
def test_a_slice_dequantizes_to_the_same_values_as_the_whole_tensor(qtype: Q) -> None:
    block, type_size = gguf.GGML_QUANT_SIZES[qtype]
    rows, blocks = 6, 3
    rng = np.random.default_rng(0)
    if qtype in (Q.F32, Q.F16):
        data = rng.standard_normal((rows, blocks * block * 32)).astype(np.float32 if qtype == Q.F32 else np.float16)
    else:  # any bytes are a valid block; NaNs from random scales compare equal below
        data = rng.integers(0, 256, (rows, blocks * type_size * (32 if block == 1 else 1)), dtype=np.uint8)
    whole = gguf.quants.dequantize(data.view(np.uint8), qtype)
    columns = whole.shape[-1]
    for start, length in [(0, columns), (block, block), (block // 2 + 1, columns // 2), (columns - 3, 3)]:
        np.testing.assert_array_equal(dequantize_slice(data, qtype, 1, start, length), whole[:, start : start + length])
    np.testing.assert_array_equal(dequantize_slice(data, qtype, 0, 2, 3), whole[2:5])
    np.testing.assert_array_equal(dequantize_slice(data, qtype, None, 0, 0), whole)


def test_half_split_rows_undoes_llama_cpp_interleave() -> None:
    rows = np.arange(4 * 8 * 3, dtype=np.float32).reshape(4 * 8, 3)  # 4 heads of head_dim 8
    interleaved = interleave_rows(rows, head_dim=8)
    assert not np.array_equal(interleaved, rows)
    np.testing.assert_array_equal(half_split_rows(interleaved, head_dim=8), rows)
    # Per-rank slices of whole heads undo the same way.
    np.testing.assert_array_equal(half_split_rows(interleaved[8:16], head_dim=8), rows[8:16])


def test_a_directory_with_one_gguf_is_served_under_its_name(tiny_gguf) -> None:
    path = tiny_gguf("llama", Q.Q8_0)
    checkpoint = Checkpoint.locate(path.parent)
    assert checkpoint.is_gguf and checkpoint.path == path
    assert checkpoint.model_config().architecture == "LlamaForCausalLM"


def test_a_gguf_rewritten_in_place_is_read_anew(tiny_checkpoint_dir_for_gguf, tmp_path: Path) -> None:
    # One parse per file version serves a process's reads; a new file at the same path is a new version.
    path = write_tiny_gguf(tiny_checkpoint_dir_for_gguf, tmp_path / "model.gguf", Q.Q8_0)
    assert Checkpoint.locate(path).model_config().architecture == "LlamaForCausalLM"
    write_gpt2_gguf(path)
    with pytest.raises(ConfigError, match="unsupported GGUF architecture 'gpt2'"):
        Checkpoint.locate(path).model_config()


def write_gpt2_gguf(path: Path) -> None:
    """A valid GGUF file of an architecture tpserve does not serve."""
    writer = gguf.GGUFWriter(str(path), "gpt2")
    writer.add_block_count(1)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_several_ggufs_in_one_directory_are_refused_by_name(tiny_gguf, tmp_path: Path) -> None:
    for name in ("a.gguf", "b.gguf"):
        (tmp_path / name).write_bytes(tiny_gguf("llama", Q.Q8_0).read_bytes())
    with pytest.raises(ConfigError, match=r"several GGUF files \(a\.gguf, b\.gguf\)"):
        Checkpoint.locate(tmp_path)


def test_unsupported_architecture_is_named(tmp_path: Path) -> None:
    path = tmp_path / "gpt2.gguf"
    write_gpt2_gguf(path)
    proc = subprocess.run(
        [sys.executable, "-m", "tpserve", "--model", str(path), "--device", "cpu"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "unsupported GGUF architecture 'gpt2'" in proc.stderr, proc.stderr


def test_unsupported_quantization_is_named(tiny_checkpoint_dir_for_gguf, tmp_path: Path) -> None:
    path = write_tiny_gguf(
        tiny_checkpoint_dir_for_gguf, tmp_path / "iq.gguf", Q.Q8_0, {"blk.0.ffn_up.weight": Q.IQ4_NL}
    )
    with pytest.raises(ConfigError, match=r"blk\.0\.ffn_up\.weight is quantized as IQ4_NL"):
        LLM(str(path), tp=1)


def test_a_tensor_the_model_does_not_use_is_named(tiny_checkpoint_dir_for_gguf, tmp_path: Path) -> None:
    extra = {"blk.0.attn_sinks.weight": np.ones(8, dtype=np.float32)}
    path = write_tiny_gguf(tiny_checkpoint_dir_for_gguf, tmp_path / "extra.gguf", Q.Q8_0, extra_tensors=extra)
    with pytest.raises(EngineError, match=r"blk\.0\.attn_sinks\.weight are not used"):
        LLM(str(path), tp=1)


def test_llama3_rope_scaling_is_refused_by_name(tiny_checkpoint_dir_for_gguf, tmp_path: Path) -> None:
    extra = {"rope_freqs.weight": np.ones(8, dtype=np.float32)}
    path = write_tiny_gguf(tiny_checkpoint_dir_for_gguf, tmp_path / "rope.gguf", Q.Q8_0, extra_tensors=extra)
    with pytest.raises(ConfigError, match=r"rope scaling \(the rope_freqs tensor\)"):
        LLM(str(path), tp=1)


@pytest.fixture(scope="module")
def tiny_checkpoint_dir_for_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_checkpoint(tmp_path_factory.mktemp("hf"), replace(GGUF_SPECS["llama"], num_layers=1))


def test_the_gguf_check_script_compares_with_both_reference_attentions(
    tiny_checkpoint_dir_for_gguf, tmp_path: Path
) -> None:
    # bench/check_gguf.py is the GPU check of issue 23; run here on CPU so it cannot rot between calls.
    path = write_tiny_gguf(tiny_checkpoint_dir_for_gguf, tmp_path / "check.gguf", Q.Q8_0)
    script = Path(__file__).resolve().parents[2] / "bench" / "check_gguf.py"
    flags = ["--device", "cpu", "--attn", "torch", "--dtype", "float32", "--max-tokens", "6"]
    proc = subprocess.run(
        [sys.executable, str(script), "--model", str(path), *flags],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "tpserve (torch) against transformers (sdpa), float32: 5/5 equal" in proc.stdout
    assert "transformers (eager) against transformers (sdpa), float32: 5/5 equal" in proc.stdout

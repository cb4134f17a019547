"""transformers' own forward and generate on a checkpoint: the reference the engine must match."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM


@lru_cache(maxsize=8)
def hf_model(path: Path, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """The checkpoint directory's model, or a GGUF file's through transformers' own GGUF loading."""
    if path.suffix == ".gguf":
        return AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=dtype).eval()
    return AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype).eval()


def hf_greedy(path: Path, prompt: list[int], max_new_tokens: int) -> list[int]:
    """transformers' greedy continuation, one prompt at a time (no padding to perturb it)."""
    return list(_hf_greedy(path, tuple(prompt), max_new_tokens))


@lru_cache(maxsize=64)  # the same reference serves every tp a test runs at
def _hf_greedy(path: Path, prompt: tuple[int, ...], max_new_tokens: int) -> tuple[int, ...]:
    model = hf_model(path)
    with torch.no_grad():
        out = model.generate(
            torch.tensor([list(prompt)]),
            attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=None,  # the engine side runs with ignore_eos: compare full lengths
            pad_token_id=0,
        )
    tokens = out[0, len(prompt) :].tolist()
    assert len(tokens) == max_new_tokens, "transformers stopped early; the comparison needs full length"
    return tuple(tokens)


def hf_next_token_logprobs(path: Path, prompt: list[int], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    model = hf_model(path, dtype)
    with torch.no_grad():
        logits = model(torch.tensor([prompt])).logits[0, -1]
    return torch.log_softmax(logits.double(), dim=-1)

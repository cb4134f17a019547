"""Per-request logits adjustments before sampling, with vLLM's and SGLang's meanings.

Applied on rank 0 to the gathered logits, in this order: `logit_bias` (added), `min_tokens` (eos
and stop tokens impossible before that many tokens), then the penalties over the tokens generated
so far: `frequency_penalty` × count and `presence_penalty` × (count > 0) subtracted, and
`repetition_penalty` dividing positive and multiplying negative logits of every token in the prompt
or the output. Each is one batched tensor operation over the rows that ask for it, never a Python
loop over the vocabulary. (`min_p` filters probabilities after temperature: see sampling.py.)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .sampling import SamplingParams


@dataclass(frozen=True)
class RowHistory:
    """What a sampling row's adjustments read: its parameters and tokens so far."""

    params: SamplingParams
    prompt: Sequence[int]
    generated: Sequence[int]  # the tokens generated before the one being sampled


def adjust_logits(logits: torch.Tensor, rows: list[RowHistory], eos_token_ids: tuple[int, ...]) -> torch.Tensor:
    """float32 logits with every row's adjustments applied (the input when no row has any)."""
    if not any(row.params.adjusts_logits for row in rows):
        return logits
    out = logits.to(torch.float32, copy=True)  # never in place: the logits may be a graph's static output
    device = out.device
    _add_logit_bias(out, rows, device)
    _forbid_stops_before_min_tokens(out, rows, eos_token_ids, device)
    penalized = [i for i, row in enumerate(rows) if row.params.penalizes_repeats]
    if penalized:
        index = torch.tensor(penalized, device=device)
        out[index] = _penalize(out[index], [rows[i] for i in penalized])
    return out


def _pairs(per_row: list[Sequence[int]], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(row index, token) of every token of every row, flattened."""
    row_ids = [i for i, tokens in enumerate(per_row) for _ in tokens]
    token_ids = [t for tokens in per_row for t in tokens]
    return torch.tensor(row_ids, dtype=torch.int64, device=device), torch.tensor(
        token_ids, dtype=torch.int64, device=device
    )


def _add_logit_bias(out: torch.Tensor, rows: list[RowHistory], device: torch.device) -> None:
    triples = [(i, token, bias) for i, row in enumerate(rows) for token, bias in row.params.logit_bias]
    if not triples:
        return
    row_ids = torch.tensor([i for i, _, _ in triples], device=device)
    token_ids = torch.tensor([t for _, t, _ in triples], device=device)
    biases = torch.tensor([b for _, _, b in triples], device=device, dtype=out.dtype)
    out.index_put_((row_ids, token_ids), biases, accumulate=True)


def _forbid_stops_before_min_tokens(
    out: torch.Tensor, rows: list[RowHistory], eos_token_ids: tuple[int, ...], device: torch.device
) -> None:
    banned: list[Sequence[int]] = []
    for row in rows:
        params = row.params
        early = len(row.generated) < params.min_tokens
        stops = set(params.stop_token_ids) | (set() if params.ignore_eos else set(eos_token_ids))
        banned.append(sorted(stops) if early else [])
    if any(banned):
        row_ids, token_ids = _pairs(banned, device)
        out[row_ids, token_ids] = float("-inf")


def _penalize(logits: torch.Tensor, rows: list[RowHistory]) -> torch.Tensor:
    device = logits.device
    counts = torch.zeros_like(logits)
    row_ids, token_ids = _pairs([row.generated for row in rows], device)
    counts.index_put_((row_ids, token_ids), torch.ones_like(row_ids, dtype=logits.dtype), accumulate=True)
    frequency = torch.tensor([r.params.frequency_penalty for r in rows], device=device, dtype=logits.dtype)
    presence = torch.tensor([r.params.presence_penalty for r in rows], device=device, dtype=logits.dtype)
    logits = logits - frequency.unsqueeze(1) * counts - presence.unsqueeze(1) * (counts > 0)
    repetition = torch.tensor([r.params.repetition_penalty for r in rows], device=device, dtype=logits.dtype)
    seen = counts > 0
    prompt_rows, prompt_tokens = _pairs([row.prompt for row in rows], device)
    seen[prompt_rows, prompt_tokens] = True
    scale = repetition.unsqueeze(1)
    repeated = torch.where(logits > 0, logits / scale, logits * scale)
    return torch.where(seen, repeated, logits)

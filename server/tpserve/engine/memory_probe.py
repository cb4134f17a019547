"""How much device memory one serving step can take beyond weights, KV cache and graphs.

The KV cache takes what `--mem-fraction-static` leaves, so anything a step allocates later must
be set aside first, or a long prompt arriving while the server is full runs it out of memory
mid-serving. The worst step is measured, not estimated: before the cache is sized, every rank runs
a prefill of `--max-prefill-length` tokens over the one-page probe cache (every position on page
0: the values are garbage, the activations real), and rank 0's sampler samples a full batch of
`--max-running-requests` rows by its costliest path (top-k/top-p over the sorted vocabulary, with
the most log-probabilities the API hands out).
"""

from __future__ import annotations

import dataclasses
import gc
from collections.abc import Callable
from typing import Protocol

import numpy as np
import torch

from ..core.batch import ForwardBatch
from .sampling import PendingPromptLogprobs, Sampler, SamplingParams
from .scheduler import PROMPT_LOGPROBS_CHUNK

MAX_TOP_LOGPROBS = 20  # the OpenAI API's limit for top_logprobs


class MemoryMeter(Protocol):
    """Peak device memory of a stretch of work, above what was resident when it began."""

    def start(self) -> None: ...

    def peak_bytes(self) -> int: ...


class CudaMemoryMeter:
    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.resident = 0

    def start(self) -> None:
        gc.collect()
        torch.cuda.synchronize(self.device)
        self.resident = torch.cuda.memory_allocated(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)

    def peak_bytes(self) -> int:
        torch.cuda.synchronize(self.device)
        return int(torch.cuda.max_memory_allocated(self.device) - self.resident)


def memory_meter(device: torch.device) -> MemoryMeter | None:
    """The meter for this device, or None where nothing is reserved (CPU: host memory is not sized so)."""
    return CudaMemoryMeter(device) if device.type == "cuda" else None


def step_peak_bytes(
    meter: MemoryMeter,
    device: torch.device,
    forward_eager: Callable[[ForwardBatch], torch.Tensor],
    prefill_tokens: int,
    page_size: int,
    sample_rows: int,
    vocab_size: int,
    logits_dtype: torch.dtype,
) -> int:
    """Peak bytes allocated by the largest prefill step and the largest sampling, above what is resident."""
    meter.start()
    pages = -(-prefill_tokens // page_size)
    # With the most prompt positions whose logits one step returns (a prompt_logprobs request).
    prompt_rows = min(PROMPT_LOGPROBS_CHUNK, prefill_tokens - 1)
    step = ForwardBatch.fresh([0] * prefill_tokens, [prefill_tokens], [prefill_tokens], [[0] * pages], [True])
    step = dataclasses.replace(step, prompt_logits=np.asarray([prompt_rows], dtype=np.int64))
    logits = forward_eager(step)
    targets = torch.zeros(prompt_rows, dtype=torch.int64, device=device)
    PendingPromptLogprobs(logits[1:], targets, MAX_TOP_LOGPROBS).results()
    del logits
    logits = torch.zeros(sample_rows, vocab_size, dtype=logits_dtype, device=device)
    sampler = Sampler(device)
    seeded = sampler.new_request_rng(0)  # a seeded row takes the sorted path, the largest
    params = [SamplingParams(temperature=1.0, top_p=0.9, top_k=50, logprobs=MAX_TOP_LOGPROBS)] * sample_rows
    sampler.sample(logits, params, [seeded] * sample_rows).results()
    peak = meter.peak_bytes()
    del logits
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return peak

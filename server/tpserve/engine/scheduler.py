"""Continuous batching with chunked prefill over a paged KV cache. Runs on rank 0 only.

Every step mixes the decode token of each running sequence with prefill chunks (at most
`max_prefill_length` prefill tokens in all), so long prompts never stall running streams.
When pages run out, the newest running sequence is preempted and later recomputed.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from enum import Enum

import torch

from ..core.batch import ForwardBatch
from ..kvcache.allocator import PageAllocator
from .sampling import SampleResult, SamplingParams, TokenLogprobs


class RequestError(ValueError):
    """A request the engine cannot take; the message names the problem."""


class FinishReason(str, Enum):
    STOP = "stop"
    LENGTH = "length"
    ABORT = "abort"


@dataclass
class Sequence:
    request_id: str
    token_ids: list[int]  # prompt followed by generated tokens
    prompt_len: int
    params: SamplingParams
    rng: torch.Generator | None = None
    pages: list[int] = field(default_factory=list)
    num_cached: int = 0  # tokens whose K/V are in the cache
    finish_reason: FinishReason | None = None
    arrival_time: float = field(default_factory=time.monotonic)

    @property
    def num_generated(self) -> int:
        return len(self.token_ids) - self.prompt_len

    @property
    def num_uncached(self) -> int:
        return len(self.token_ids) - self.num_cached


@dataclass(frozen=True)
class StepOutput:
    """What one step produced for one request."""

    request_id: str
    token_id: int | None
    logprobs: TokenLogprobs | None
    finish_reason: FinishReason | None


@dataclass(frozen=True)
class SchedulerLimits:
    page_size: int
    num_pages: int
    max_running: int
    max_prefill_length: int
    max_model_len: int
    eos_token_ids: tuple[int, ...]


class Scheduler:
    def __init__(self, limits: SchedulerLimits) -> None:
        self.limits = limits
        self.pages = PageAllocator(limits.num_pages)
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self._by_id: dict[str, Sequence] = {}
        self._preempted_this_step = False

    # -- admission -------------------------------------------------------------------------
    def add(self, seq: Sequence) -> None:
        prompt_len = len(seq.token_ids)
        if prompt_len == 0:
            raise RequestError("prompt is empty")
        if prompt_len >= self.limits.max_model_len:
            raise RequestError(
                f"prompt has {prompt_len} tokens; the model's context length is {self.limits.max_model_len}"
            )
        if self._pages_for(prompt_len + 1) > self.limits.num_pages:
            raise RequestError(
                f"prompt has {prompt_len} tokens; the KV cache holds {self.limits.num_pages * self.limits.page_size}"
            )
        if seq.request_id in self._by_id:
            raise RequestError(f"request id {seq.request_id!r} is already in flight")
        self._by_id[seq.request_id] = seq
        self.waiting.append(seq)

    def abort(self, request_id: str) -> StepOutput | None:
        seq = self._by_id.get(request_id)
        if seq is None:
            return None
        seq.finish_reason = FinishReason.ABORT
        self._finish(seq)
        return StepOutput(request_id, None, None, FinishReason.ABORT)

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    # -- planning --------------------------------------------------------------------------
    def schedule(self) -> tuple[ForwardBatch, list[Sequence]] | None:
        """Choose this step's sequences and token counts; allocate their pages."""
        scheduled: list[tuple[Sequence, int]] = []
        self._preempted_this_step = False
        for seq in list(self._decoding()):
            if seq not in self.running:
                continue  # preempted while making room for an earlier one
            if self._reserve(seq, 1, preempt=True):
                scheduled.append((seq, 1))
        budget = self.limits.max_prefill_length
        for seq in self._prefilling():
            if budget == 0:
                break
            chunk = self._reserve_chunk(seq, min(seq.num_uncached, budget))
            if chunk:
                scheduled.append((seq, chunk))
                budget -= chunk
        # After a preemption the cache is short: admitting now would only thrash.
        while budget and self.waiting and len(self.running) < self.limits.max_running and not self._preempted_this_step:
            seq = self.waiting[0]
            chunk = self._reserve_chunk(seq, min(seq.num_uncached, budget))
            if chunk == 0:
                break  # wait for pages to come back
            self.waiting.popleft()
            self.running.append(seq)
            scheduled.append((seq, chunk))
            budget -= chunk
        if not scheduled:
            return None
        batch = ForwardBatch(
            token_ids=[t for seq, n in scheduled for t in seq.token_ids[seq.num_cached : seq.num_cached + n]],
            query_lens=[n for _, n in scheduled],
            context_lens=[seq.num_cached + n for seq, n in scheduled],
            page_tables=[list(seq.pages) for seq, _ in scheduled],
            sample=[seq.num_cached + n == len(seq.token_ids) for seq, n in scheduled],
        )
        return batch, [seq for seq, _ in scheduled]

    def _decoding(self) -> list[Sequence]:
        return [s for s in self.running if s.num_uncached == 1 and s.num_cached > 0]

    def _prefilling(self) -> list[Sequence]:
        return [s for s in self.running if s.num_uncached > 1 or s.num_cached == 0]

    def _pages_for(self, tokens: int) -> int:
        return -(-tokens // self.limits.page_size)

    def _reserve(self, seq: Sequence, tokens: int, preempt: bool) -> bool:
        needed = self._pages_for(seq.num_cached + tokens) - len(seq.pages)
        while needed > self.pages.num_free:
            if not preempt:
                return False
            victim = self.running[-1]
            self._preempt(victim)
            if victim is seq:
                return False
        if needed > 0:
            seq.pages.extend(self.pages.allocate(needed))
        return True

    def _reserve_chunk(self, seq: Sequence, wanted: int) -> int:
        """The largest chunk <= wanted whose pages fit in what is free (0 if none)."""
        page_size = self.limits.page_size
        room = (len(seq.pages) + self.pages.num_free) * page_size - seq.num_cached
        chunk = max(0, min(wanted, room))
        if chunk:
            self._reserve(seq, chunk, preempt=False)
        return chunk

    def _preempt(self, seq: Sequence) -> None:
        # Recompute later: cheaper to implement than swapping, and rare when the cache is sized well.
        self.running.remove(seq)
        self.pages.release(seq.pages)
        seq.pages = []
        seq.num_cached = 0
        self.waiting.appendleft(seq)
        self._preempted_this_step = True

    # -- results ---------------------------------------------------------------------------
    def update(self, seqs: list[Sequence], batch: ForwardBatch, samples: list[SampleResult]) -> list[StepOutput]:
        outputs: list[StepOutput] = []
        sampled = iter(samples)
        for seq, query_len, wants_sample in zip(seqs, batch.query_lens, batch.sample):
            seq.num_cached += query_len
            if not wants_sample:
                continue
            result = next(sampled)
            seq.token_ids.append(result.token_id)
            reason = self._finish_reason(seq, result.token_id)
            if reason is not None:
                seq.finish_reason = reason
                self._finish(seq)
            outputs.append(StepOutput(seq.request_id, result.token_id, result.logprobs, reason))
        return outputs

    def _finish_reason(self, seq: Sequence, token: int) -> FinishReason | None:
        params = seq.params
        if token in params.stop_token_ids:
            return FinishReason.STOP
        if not params.ignore_eos and token in self.limits.eos_token_ids:
            return FinishReason.STOP
        if seq.num_generated >= params.max_tokens or len(seq.token_ids) >= self.limits.max_model_len:
            return FinishReason.LENGTH
        return None

    def _finish(self, seq: Sequence) -> None:
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        self.pages.release(seq.pages)
        seq.pages = []
        self._by_id.pop(seq.request_id, None)

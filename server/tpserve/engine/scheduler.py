"""Continuous batching with chunked prefill over a paged KV cache with a radix prefix cache.

Runs on rank 0 only. Every step mixes the decode token of each running sequence with prefill
chunks (at most `max_prefill_length` prefill tokens in all), so long prompts never stall running
streams. A new sequence starts from the longest cached prefix of its tokens (its full pages are
shared with the radix tree, read-only); its own full pages join the tree as they are computed.
Admission keeps room for the decode growth running sequences are expected to need; when pages
still run out, the sequence with the least progress is preempted (its computed pages stay cached,
so resuming is cheap), and a sequence that alone cannot grow further finishes with `length`.
"""

from __future__ import annotations

import contextlib
import time
from collections import deque
from dataclasses import dataclass, field
from enum import Enum
from typing import Protocol

import torch

from ..core.batch import FROM_DEVICE, ForwardBatch, PageUpdates
from ..kvcache.allocator import PageAllocator
from ..kvcache.radix_cache import RadixCache, RadixNode
from .sampling import SampleResult, SamplingParams, TokenLogprobs


class RequestError(ValueError):
    """A request the engine cannot take; the message names the problem."""


class FinishReason(str, Enum):
    STOP = "stop"
    LENGTH = "length"
    ABORT = "abort"


class TokenAcceptor(Protocol):
    def accept(self, token: int) -> bool:
        """Follow one more generated token; True when the output must end here."""
        ...


@dataclass(eq=False)  # identity semantics: `in` and removal never compare fields
class Sequence:
    request_id: str
    token_ids: list[int]  # prompt followed by generated tokens
    prompt_len: int
    params: SamplingParams
    rng: torch.Generator | None = None
    pages: list[int] = field(default_factory=list)
    nodes: list[RadixNode] = field(default_factory=list)  # locked tree nodes: the first len(nodes) pages
    num_cached: int = 0  # tokens whose K/V are in the cache or computed by a planned step
    finish_reason: FinishReason | None = None
    arrival_time: float = field(default_factory=time.monotonic)
    scheduled_time: float | None = None  # when it first ran (a preempted one keeps its first)
    row: int = -1  # request row in every rank's tables while running
    pages_sent: int = 0  # leading entries of `pages` the ranks' page tables hold
    num_pending: int = 0  # trailing placeholders in token_ids: tokens planned but not yet sampled
    on_device: bool = False  # its last token is (or will be) the row's sampled token on the device
    epoch: int = 0  # bumped when it stops running: rows planned before then are stale
    prompt_logprobs_sent: int = 1  # prompt tokens before this index have had their logprob reported
    grammar: TokenAcceptor | None = None  # a structured output's matcher (engine/grammar.py)

    @property
    def num_known(self) -> int:
        """Tokens whose ids are known on the host."""
        return len(self.token_ids) - self.num_pending

    @property
    def num_generated(self) -> int:
        return len(self.token_ids) - self.prompt_len

    @property
    def num_uncached(self) -> int:
        return len(self.token_ids) - self.num_cached

    def remaining_tokens(self, max_model_len: int) -> int:
        """Tokens this sequence may still generate."""
        return max(0, min(self.params.max_tokens - self.num_generated, max_model_len - len(self.token_ids)))


@dataclass(frozen=True)
class StepOutput:
    """What one step produced for one request."""

    request_id: str
    token_id: int | None
    logprobs: TokenLogprobs | None
    finish_reason: FinishReason | None
    prompt_logprobs: list[TokenLogprobs] | None = None  # the next prompt tokens' (no token then)
    # With a request's first token: seconds from its arrival at the scheduler until it first ran.
    queued_s: float | None = None


@dataclass(frozen=True)
class SampledRow:
    """A row of a planned step that samples: which sequence, as of when, and into which index."""

    seq: Sequence
    epoch: int
    token_index: int


@dataclass(frozen=True)
class PromptRow:
    """A row whose first `count` positions give the log-probabilities of prompt tokens."""

    seq: Sequence
    epoch: int
    first_token: int  # the prompt token the row's first position predicts
    count: int


@dataclass(frozen=True)
class ScheduledStep:
    batch: ForwardBatch
    seqs: list[Sequence]  # one per row
    sampled: list[SampledRow]  # one per sampling row, in row order
    prompt_rows: list[PromptRow] = field(default_factory=list)
    prompt_targets: list[int] = field(default_factory=list)  # the token each prompt position predicts
    # Whether any sampling row adjusts its logits (penalties, bias, min_tokens), follows a grammar,
    # or needs its previous token on the host before its next step is planned (no overlap).
    adjusts_logits: bool = False
    constrained: bool = False
    needs_previous_token: bool = False

    @property
    def prompt_top_n(self) -> int:
        return max((row.seq.params.prompt_logprobs or 0 for row in self.prompt_rows), default=0)


@dataclass(frozen=True)
class CacheStats:
    """The KV cache as the metrics report it; the totals count since the engine started."""

    pages_in_use: int = 0  # held by unfinished requests
    pages_cached: int = 0  # in the prefix tree, held by nobody (evictable)
    prefix_hit_tokens: int = 0
    prefix_queried_tokens: int = 0
    preemptions: int = 0
    evicted_pages: int = 0


@dataclass(frozen=True)
class SchedulerLimits:
    page_size: int
    num_pages: int
    max_running: int
    max_prefill_length: int
    max_model_len: int
    eos_token_ids: tuple[int, ...]
    radix_cache: bool = True
    schedule_policy: str = "lpm"  # or "fcfs"
    max_queue_age_s: float = 10.0  # under lpm, a request waiting longer goes first
    # Prefill steps in a row while running streams wait for their next token: 1 alternates prefill
    # and decode steps; more lets a burst of arrivals prefill together, as prefill-first engines do.
    max_prefill_streak: int = 1


SCHEDULE_POLICIES = ("lpm", "fcfs")
PLACEHOLDER = -1  # a token planned but not yet sampled
# Below this many waiting requests the queue is served in arrival order: with a short queue the
# order barely changes what is cached, and matching every waiting prompt each step is not free.
LPM_MIN_WAITING = 4


# A request wanting prompt log-probabilities prefills at most this many tokens a step: each of
# them adds a row of full-vocabulary logits to the step.
PROMPT_LOGPROBS_CHUNK = 1024

# The share of its remaining max_tokens a running sequence is expected to still generate, as
# SGLang estimates it: start cautious, decay as sequences finish early, back up on a preemption.
INITIAL_NEW_TOKEN_RATIO = 0.7
MIN_NEW_TOKEN_RATIO = 0.1
NEW_TOKEN_RATIO_DECAY = 0.001
NEW_TOKEN_RATIO_ON_PREEMPTION = 0.2


class Scheduler:
    def __init__(self, limits: SchedulerLimits) -> None:
        self.limits = limits
        self.pages = PageAllocator(limits.num_pages)
        self.radix = RadixCache(limits.page_size, self.pages) if limits.radix_cache else None
        self.waiting: deque[Sequence] = deque()
        self._running: dict[str, Sequence] = {}  # insertion-ordered; O(1) membership and removal
        self._by_id: dict[str, Sequence] = {}
        self._preempted_this_step = False
        self._finished_in_planning: list[StepOutput] = []
        self._step_rows: dict[str, tuple[Sequence, int]] = {}
        self._free_rows = list(range(limits.max_running - 1, -1, -1))
        self._prefill_streak = 0  # prefill steps since the last decode step
        self.new_token_ratio = INITIAL_NEW_TOKEN_RATIO
        self.num_preemptions = 0
        self.prefix_queried_tokens = 0
        self.prefix_hit_tokens = 0

    @property
    def running(self) -> list[Sequence]:
        return list(self._running.values())

    @property
    def num_running(self) -> int:
        return len(self._running)

    @property
    def pages_in_use(self) -> int:
        """Pages held by unfinished sequences (cached pages nobody holds are free to evict)."""
        return self.pages.num_used - self._evictable()

    def cache_stats(self) -> CacheStats:
        return CacheStats(
            pages_in_use=self.pages_in_use,
            pages_cached=self._evictable(),
            prefix_hit_tokens=self.prefix_hit_tokens,
            prefix_queried_tokens=self.prefix_queried_tokens,
            preemptions=self.num_preemptions,
            evicted_pages=self.radix.num_evicted if self.radix is not None else 0,
        )

    def _evictable(self) -> int:
        return self.radix.num_evictable if self.radix is not None else 0

    def _capacity(self) -> int:
        """Pages that can be handed out now: free ones and cached ones nobody holds."""
        return self.pages.num_free + self._evictable()

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
        return bool(self.waiting or self._running)

    def take_finished_in_planning(self) -> list[StepOutput]:
        """Sequences `schedule` ended without a new token (they could not grow any further)."""
        finished, self._finished_in_planning = self._finished_in_planning, []
        return finished

    # -- planning --------------------------------------------------------------------------
    def schedule(self) -> ScheduledStep | None:
        """Choose this step's sequences and token counts; allocate their pages."""
        # This step's rows by request id: a preemption while planning takes its victim out again.
        self._step_rows = {}
        self._preempted_this_step = False
        self.new_token_ratio = max(MIN_NEW_TOKEN_RATIO, self.new_token_ratio - NEW_TOKEN_RATIO_DECAY)
        decodable = [s for s in self._running.values() if self._can_decode(s)]
        has_prefill = bool(self.waiting) or any(not s.on_device for s in self._running.values())
        # When both have work, a stream waits at most max_prefill_streak prefill steps between tokens.
        prefill_first = has_prefill and (not decodable or self._prefill_streak < self.limits.max_prefill_streak)
        for prefill in (True, False) if prefill_first else (False, True):
            if prefill:
                self._plan_prefill()
            else:
                self._plan_decode(decodable)
            if self._step_rows:
                self._prefill_streak = self._prefill_streak + 1 if prefill else 0
                return self._build_step(list(self._step_rows.values()))
        return None

    def _plan_decode(self, decodable: list[Sequence]) -> None:
        for seq in decodable:
            if seq.request_id not in self._running:
                continue  # preempted while making room for an earlier one
            if self._grow(seq):
                self._step_rows[seq.request_id] = (seq, 1)

    def _plan_prefill(self) -> None:
        scheduled = self._step_rows
        budget = self.limits.max_prefill_length
        for seq in [s for s in self._running.values() if not s.on_device]:
            if budget == 0:
                break
            chunk = self._reserve_chunk(seq, min(self._chunk_wanted(seq), budget))
            if chunk:
                scheduled[seq.request_id] = (seq, chunk)
                budget -= chunk
        # After a preemption the cache is short: admitting now would only thrash.
        reserved = self._reserved_decode_pages() if self.waiting else 0
        if budget and self.waiting and not self._preempted_this_step:
            self._order_waiting()
        while (
            budget and self.waiting and len(self._running) < self.limits.max_running and not self._preempted_this_step
        ):
            seq = self.waiting[0]
            chunk = self._admit(seq, budget, reserved)
            if chunk == 0:
                break  # wait for pages to come back
            self.waiting.popleft()
            self._running[seq.request_id] = seq
            scheduled[seq.request_id] = (seq, chunk)
            budget -= chunk
            reserved += self._pages_still_needed(seq)

    def _build_step(self, rows: list[tuple[Sequence, int]]) -> ScheduledStep:
        """The plan of `rows`, then every row advanced as if the step had run."""
        updates: list[tuple[int, int, list[int]]] = []
        token_ids: list[int] = []
        for seq, n in rows:
            if len(seq.pages) > seq.pages_sent:
                updates.append((seq.row, seq.pages_sent, seq.pages[seq.pages_sent :]))
                seq.pages_sent = len(seq.pages)
            if seq.on_device:
                token_ids.append(FROM_DEVICE)  # the token its previous step samples
            else:
                token_ids += seq.token_ids[seq.num_cached : seq.num_cached + n]
        prompt_logits, prompt_rows, prompt_targets = self._prompt_logit_rows(rows)
        batch = ForwardBatch.make(
            rows=[seq.row for seq, _ in rows],
            token_ids=token_ids,
            query_lens=[n for _, n in rows],
            context_lens=[seq.num_cached + n for seq, n in rows],
            sample=[seq.num_cached + n == len(seq.token_ids) for seq, n in rows],
            page_updates=PageUpdates.concat(updates),
            prompt_logits=prompt_logits,
        )
        sampled: list[SampledRow] = []
        adjusts = constrained = needs_previous = False
        for seq, n in rows:
            decoding = seq.on_device  # its newest page fills when its sampled token is known (update)
            seq.num_cached += n
            if seq.num_cached == len(seq.token_ids):
                sampled.append(SampledRow(seq, seq.epoch, len(seq.token_ids)))
                seq.token_ids.append(PLACEHOLDER)
                seq.num_pending += 1
                seq.on_device = True
                adjusts |= seq.params.adjusts_logits
                constrained |= seq.grammar is not None
                needs_previous |= seq.params.needs_previous_token
            if not decoding:
                self._cache_full_pages(seq)
        return ScheduledStep(
            batch,
            [seq for seq, _ in rows],
            sampled,
            prompt_rows,
            prompt_targets,
            adjusts_logits=adjusts,
            constrained=constrained,
            needs_previous_token=needs_previous,
        )

    def _prompt_logit_rows(self, rows: list[tuple[Sequence, int]]) -> tuple[list[int], list[PromptRow], list[int]]:
        """Per row the positions whose logits give prompt log-probabilities (position i: token i + 1)."""
        counts: list[int] = []
        prompt_rows: list[PromptRow] = []
        targets: list[int] = []
        for seq, n in rows:
            start = seq.num_cached
            count = 0
            if seq.params.prompt_logprobs is not None and not seq.on_device:
                count = max(0, min(start + n, seq.prompt_len - 1) - start)
            counts.append(count)
            if count:
                prompt_rows.append(PromptRow(seq, seq.epoch, start + 1, count))
                targets += seq.token_ids[start + 1 : start + 1 + count]
        return counts, prompt_rows, targets

    def _chunk_wanted(self, seq: Sequence) -> int:
        if seq.params.prompt_logprobs is not None and seq.num_cached < seq.prompt_len:
            return min(seq.num_uncached, PROMPT_LOGPROBS_CHUNK)
        return seq.num_uncached

    def _can_decode(self, seq: Sequence) -> bool:
        """Its next token can be planned: it decodes and has not already planned its last one."""
        return seq.on_device and seq.remaining_tokens(self.limits.max_model_len) > 0

    def _order_waiting(self) -> None:
        """Longest cached prefix first (SGLang's lpm), except overdue and preempted requests."""
        radix = self.radix
        if radix is None or self.limits.schedule_policy != "lpm" or len(self.waiting) < LPM_MIN_WAITING:
            return
        now = time.monotonic()
        page_size = self.limits.page_size

        def priority(seq: Sequence) -> tuple[bool, int, float]:
            # Preempted requests (they have generated tokens) resume first, as in arrival order.
            first = seq.num_generated > 0 or now - seq.arrival_time > self.limits.max_queue_age_s
            cached = len(radix.match(seq.token_ids, (len(seq.token_ids) - 1) // page_size, touch=False))
            return (not first, -cached, seq.arrival_time)

        self.waiting = deque(sorted(self.waiting, key=priority))

    def _pages_for(self, tokens: int) -> int:
        return -(-tokens // self.limits.page_size)

    def _pages_still_needed(self, seq: Sequence, held: int | None = None) -> int:
        """Pages `seq` is expected to still take beyond the `held` it has (default: its own)."""
        expected = int(self.new_token_ratio * seq.remaining_tokens(self.limits.max_model_len))
        return max(0, self._pages_for(len(seq.token_ids) + expected) - (len(seq.pages) if held is None else held))

    def _reserved_decode_pages(self) -> int:
        return sum(self._pages_still_needed(s) for s in self._running.values())

    def _admit(self, seq: Sequence, budget: int, reserved: int) -> int:
        """Start `seq` from its cached prefix and reserve its first chunk; 0 if it must wait.

        Decided before anything is locked, so a request that keeps waiting costs no tree updates.
        """
        cached = self._cached_prefix(seq, touch=False)
        # Locking the cached pages takes those nobody holds out of what can be handed out.
        capacity = self._capacity() - sum(1 for node in cached if node.refs == 0)
        if self._running and self._pages_still_needed(seq, held=len(cached)) > capacity - reserved:
            return 0
        if capacity <= 0:
            return 0  # not one page to compute into
        self._attach_prefix(seq)
        return self._reserve_chunk(seq, min(self._chunk_wanted(seq), budget))

    def _cached_prefix(self, seq: Sequence, touch: bool) -> list[RadixNode]:
        if self.radix is None or seq.params.prompt_logprobs is not None:
            return []  # prompt log-probabilities need the prompt's logits: it is computed again
        # The last token is always computed: its logits give the next token.
        max_pages = (len(seq.token_ids) - 1) // self.limits.page_size
        return self.radix.match(seq.token_ids, max_pages, touch=touch)

    def _attach_prefix(self, seq: Sequence) -> None:
        nodes = self._cached_prefix(seq, touch=True)
        if self.radix is not None:
            self.radix.lock(nodes)
        seq.nodes = nodes
        seq.pages = [node.page for node in nodes]
        seq.num_cached = len(nodes) * self.limits.page_size
        seq.row = self._free_rows.pop()  # at most max_running sequences run, one row each
        if seq.scheduled_time is None:
            seq.scheduled_time = time.monotonic()
        seq.pages_sent = 0
        self.prefix_queried_tokens += len(seq.token_ids)
        self.prefix_hit_tokens += seq.num_cached

    def _take_pages(self, count: int) -> list[int]:
        if count > self.pages.num_free and self.radix is not None:
            self.radix.evict(count - self.pages.num_free)
        return self.pages.allocate(count)

    def _grow(self, seq: Sequence) -> bool:
        """Room for one more token of `seq`, preempting others if needed; False if `seq` ended."""
        needed = self._pages_for(seq.num_cached + 1) - len(seq.pages)
        if needed <= 0:
            return True  # most steps: the token fits the last page
        while needed > self._capacity():
            victim = self._least_progress(besides=seq)
            if victim is None and seq.num_pending:
                return False  # its newest token is still being sampled: end it once that is in
            if victim is None:
                # Alone, and the whole cache cannot hold one more token: it ends here.
                seq.finish_reason = FinishReason.LENGTH
                self._finish(seq)
                self._finished_in_planning.append(StepOutput(seq.request_id, None, None, FinishReason.LENGTH))
                return False
            self._preempt(victim)
        if needed > 0:
            seq.pages.extend(self._take_pages(needed))
        return True

    def _least_progress(self, besides: Sequence) -> Sequence | None:
        others = [s for s in self._running.values() if s is not besides]
        if not others:
            return None
        # Fewest generated tokens loses; among equals the latest arrival.
        return min(others, key=lambda s: (s.num_generated, -s.arrival_time))

    def _reserve_chunk(self, seq: Sequence, wanted: int) -> int:
        """The largest chunk <= wanted whose pages fit in what can be handed out (0 if none)."""
        page_size = self.limits.page_size
        room = (len(seq.pages) + self._capacity()) * page_size - seq.num_cached
        chunk = max(0, min(wanted, room))
        needed = self._pages_for(seq.num_cached + chunk) - len(seq.pages)
        if needed > 0:
            seq.pages.extend(self._take_pages(needed))
        return chunk

    def _preempt(self, seq: Sequence) -> None:
        # Recompute later: its computed full pages stay in the radix tree (until evicted), so
        # resuming recomputes only what was lost.
        del self._running[seq.request_id]
        self._step_rows.pop(seq.request_id, None)  # it may have had a row in this step already
        self._detach(seq)
        self.waiting.appendleft(seq)
        self._preempted_this_step = True
        self.num_preemptions += 1
        self.new_token_ratio = min(1.0, self.new_token_ratio + NEW_TOKEN_RATIO_ON_PREEMPTION)

    def _detach(self, seq: Sequence) -> None:
        """Give back what `seq` holds (tree pages, its own pages, its row); forget planned tokens.

        A step still in flight may write to those pages; any step that reuses them is queued
        after it on every rank's stream, so that write can never land on someone else's tokens.
        """
        self.pages.release(seq.pages[len(seq.nodes) :])
        if self.radix is not None:
            self.radix.unlock(seq.nodes)
        if seq.row >= 0:
            self._free_rows.append(seq.row)
        del seq.token_ids[seq.num_known :]
        seq.pages = []
        seq.nodes = []
        seq.num_cached = 0
        seq.num_pending = 0
        seq.row = -1
        seq.pages_sent = 0
        seq.on_device = False
        seq.epoch += 1

    def _cache_full_pages(self, seq: Sequence) -> None:
        """Put the pages `seq` has filled into the tree (shared from now on)."""
        if self.radix is None:
            return
        page_size = self.limits.page_size
        # Pages whose K/V are computed (or queued to be) and whose token ids are all known.
        filled = min(seq.num_cached, seq.num_known)
        while (len(seq.nodes) + 1) * page_size <= filled:
            index = len(seq.nodes)
            key = tuple(seq.token_ids[index * page_size : (index + 1) * page_size])
            node, adopted = self.radix.insert(seq.nodes[-1] if seq.nodes else None, key, seq.pages[index])
            if not adopted:  # computed twice: keep the tree's copy, free ours
                self.pages.release([seq.pages[index]])
                seq.pages[index] = node.page
                seq.pages_sent = min(seq.pages_sent, index)  # the ranks' table must follow
            self.radix.lock([node])
            seq.nodes.append(node)

    # -- results ---------------------------------------------------------------------------
    def update(
        self, step: ScheduledStep, samples: list[SampleResult], prompt_logprobs: list[TokenLogprobs] | None = None
    ) -> list[StepOutput]:
        """Record a step's sampled tokens (one per sampling row); returns what to report.

        `prompt_logprobs` has one entry per `step.prompt_targets` (reported before the tokens).
        """
        outputs = self._prompt_outputs(step, prompt_logprobs or [])
        for row, result in zip(step.sampled, samples, strict=True):
            seq = row.seq
            if seq.epoch != row.epoch:
                continue  # it finished or was preempted after this step was planned
            seq.token_ids[row.token_index] = result.token_id
            seq.num_pending -= 1
            reason = self._finish_reason(seq, row.token_index, result.token_id)
            self._cache_full_pages(seq)  # a page its input token completed is shared even if it ends now
            if reason is not None:
                seq.finish_reason = reason
                self._finish(seq)
            queued_s = None
            if row.token_index == seq.prompt_len and seq.scheduled_time is not None:
                queued_s = seq.scheduled_time - seq.arrival_time
            outputs.append(StepOutput(seq.request_id, result.token_id, result.logprobs, reason, queued_s=queued_s))
        return outputs

    def _prompt_outputs(self, step: ScheduledStep, entries: list[TokenLogprobs]) -> list[StepOutput]:
        outputs: list[StepOutput] = []
        start = 0
        for row in step.prompt_rows:
            chunk, start = entries[start : start + row.count], start + row.count
            seq = row.seq
            if seq.epoch != row.epoch:
                continue
            # A recomputed (preempted) prompt reports only what it has not reported yet.
            fresh = chunk[max(0, seq.prompt_logprobs_sent - row.first_token) :]
            if not fresh:
                continue
            top_n = seq.params.prompt_logprobs or 0
            fresh = [TokenLogprobs(e.token_logprob, e.top[:top_n]) for e in fresh]
            seq.prompt_logprobs_sent = row.first_token + row.count
            outputs.append(StepOutput(seq.request_id, None, None, None, prompt_logprobs=fresh))
        return outputs

    def _finish_reason(self, seq: Sequence, index: int, token: int) -> FinishReason | None:
        params = seq.params
        if seq.grammar is not None and seq.grammar.accept(token):
            return FinishReason.STOP  # the structured output is complete
        if token in params.stop_token_ids:
            return FinishReason.STOP
        if not params.ignore_eos and token in self.limits.eos_token_ids:
            return FinishReason.STOP
        if index + 1 - seq.prompt_len >= params.max_tokens or index + 1 >= self.limits.max_model_len:
            return FinishReason.LENGTH
        return None

    def _finish(self, seq: Sequence) -> None:
        if self._running.pop(seq.request_id, None) is None:
            with contextlib.suppress(ValueError):
                self.waiting.remove(seq)  # only an abort ends a waiting sequence (rare)
        self._detach(seq)
        self._by_id.pop(seq.request_id, None)

"""The body of every rank process: rank 0 schedules and samples, every rank runs the forward."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing.queues
import os
import queue
import signal
import time
import traceback
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..core.batch import ForwardBatch
from ..core.errors import ConfigError
from ..core.logs import configure_logging
from ..distributed.group import TPGroup, destroy_tp_group, init_tp_group
from ..distributed.status_board import Phase, RankReporter
from ..kvcache.request_tables import to_device
from .config import EngineConfig
from .grammar import GrammarBackend, GrammarState
from .logits_processors import RowHistory, adjust_logits
from .messages import (
    AbortRequest,
    AddRequest,
    EngineReady,
    Idle,
    RankFailed,
    RankReady,
    RequestRejected,
    Shutdown,
    StepOutputs,
    Stop,
)
from .runner import ModelRunner
from .sampling import PendingPromptLogprobs, PendingSamples, Sampler
from .scheduler import FinishReason, RequestError, ScheduledStep, Scheduler, SchedulerLimits, Sequence, StepOutput
from .step_times import HOST_PROFILE_ENV, GpuSpan, StepTimes, host_profile

log = logging.getLogger(__name__)

HEARTBEAT_S = 1.0
GRAMMAR_POLL_S = 0.002  # how often an idle leader looks whether a grammar has compiled
PR_SET_PDEATHSIG = 1


def rank_main(
    config: EngineConfig,
    rank: int,
    status: multiprocessing.queues.Queue,  # type: ignore[type-arg]
    inbox: multiprocessing.queues.Queue | None,  # type: ignore[type-arg]
    log_level: str = "INFO",
    log_format: str = "text",
) -> None:
    """Entry point of a spawned rank process."""
    configure_logging(log_level, log_format, node=config.node_rank, rank=rank)
    _die_with_parent()
    if config.device == "cpu":
        _share_cores(config.ranks_per_node)
    group: TPGroup | None = None
    reporter: RankReporter | None = None
    try:
        started = time.monotonic()
        model_config = config.validate()
        local_rank = rank % config.ranks_per_node
        reporter = RankReporter(config.dist_init_addr, rank, config.dist_timeout)
        group = init_tp_group(
            reporter.store,
            config.tp,
            rank,
            config.device,
            local_rank,
            config.dist_timeout,
            single_node=config.nnodes == 1,
        )
        log.info("rank %d: joined the group of %d in %.2fs", rank, config.tp, time.monotonic() - started)
        runner = ModelRunner(config, model_config, group, reporter.set_phase)
        reporter.set_phase(Phase.WAITING_FOR_GROUP)
        group.barrier()
        reporter.set_phase(Phase.READY)
        status.put(RankReady(rank, time.monotonic() - started))
        if group.is_leader:
            assert inbox is not None
            with host_profile(os.environ.get(HOST_PROFILE_ENV)):
                LeaderLoop(config, runner, group, status, inbox).run()
        else:
            follower_loop(runner, group)
    except BaseException as exc:  # report, then die non-zero: the group cannot continue
        message = str(exc) if isinstance(exc, ConfigError) else f"{type(exc).__name__}: {exc}"
        status.put(RankFailed(rank, message))
        if reporter is not None:
            _try(lambda: reporter.set_phase(Phase.FAILED, message))
        log.error("rank %d failed:\n%s", rank, traceback.format_exc())
        status.close()
        status.join_thread()  # make sure the reason reaches the front end before dying
        os._exit(2 if isinstance(exc, ConfigError) else 1)
    finally:
        if group is not None:
            destroy_tp_group(group)


def _die_with_parent() -> None:
    """Ask Linux to kill this rank when its launcher dies, even by SIGKILL: no orphaned ranks."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:
        pass


def _share_cores(local_ranks: int) -> None:
    """Give each CPU rank its share of the cores.

    Every rank waits for every other at each all-reduce; with more compute threads than cores,
    OpenMP's spinning threads starve the rank everyone waits for (3 ranks on 2 cores ran 5x
    slower with torch's default of one thread per core in every rank).
    """
    torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // local_ranks))


def _try(action: Callable[[], object]) -> None:
    with contextlib.suppress(Exception):
        action()


def follower_loop(runner: ModelRunner, group: TPGroup) -> None:
    while True:
        message = group.broadcast_object(None)
        if isinstance(message, Stop):
            return
        if isinstance(message, ForwardBatch):
            runner.forward(message)
            if message.num_sampled:
                tokens = torch.empty(message.num_sampled, dtype=torch.int64, device=group.device)
                runner.record_samples(message, group.broadcast_tensor(tokens))


@dataclass
class InFlight:
    """A launched step whose sampled tokens have not been read back yet."""

    step: ScheduledStep
    samples: PendingSamples | None
    prompt_logprobs: PendingPromptLogprobs | None = None
    gpu: GpuSpan | None = None


class LeaderLoop:
    """Rank 0: admit requests, plan each step, broadcast it, run it, sample, report."""

    def __init__(
        self,
        config: EngineConfig,
        runner: ModelRunner,
        group: TPGroup,
        outbox: multiprocessing.queues.Queue,  # type: ignore[type-arg]
        inbox: multiprocessing.queues.Queue,  # type: ignore[type-arg]
    ) -> None:
        self.runner = runner
        self.group = group
        self.overlap = not config.disable_overlap_schedule
        self.in_flight: InFlight | None = None
        self.times = StepTimes(group.device)
        self.eos_token_ids = runner.model_config.eos_token_ids
        self.grammar = GrammarBackend(config.load_tokenizer, runner.model_config.vocab_size)
        self.compiling: dict[str, tuple[AddRequest, Future[GrammarState]]] = {}
        self.outbox = outbox
        self.inbox = inbox
        self.sampler = Sampler(group.device, seed=config.seed)
        model = runner.model_config
        self.scheduler = Scheduler(
            SchedulerLimits(
                page_size=config.page_size,
                num_pages=runner.num_pages,
                max_running=runner.max_running,
                max_prefill_length=config.max_prefill_length,
                max_model_len=runner.max_model_len,
                eos_token_ids=model.eos_token_ids,
                radix_cache=not config.disable_radix_cache,
                schedule_policy=config.schedule_policy,
                max_prefill_streak=config.max_prefill_streak,
            )
        )
        outbox.put(EngineReady(runner.num_pages, config.page_size, runner.max_model_len, runner.max_running))

    def run(self) -> None:
        last_broadcast = time.monotonic()
        while True:
            busy = self.scheduler.has_work or self.in_flight is not None
            wait = 0.0 if busy else GRAMMAR_POLL_S if self.compiling else HEARTBEAT_S
            for message in _drain(self.inbox, wait):
                if isinstance(message, Shutdown):
                    self.group.broadcast_object(Stop())
                    log.info("leader: %s", self.times.summary())
                    self.grammar.close()
                    return
                self._handle(message)
            self._admit_compiled()
            if self.scheduler.has_work or self.in_flight is not None:
                self._step()
                last_broadcast = time.monotonic()
            elif time.monotonic() - last_broadcast >= HEARTBEAT_S:
                self.group.broadcast_object(Idle())
                last_broadcast = time.monotonic()

    def _handle(self, message: Any) -> None:
        if isinstance(message, AddRequest):
            if message.params.structured is not None:  # joins once its grammar is compiled
                self.compiling[message.request_id] = (message, self.grammar.compile(message.params.structured))
            else:
                self._add(message, None)
        elif isinstance(message, AbortRequest):
            if self.compiling.pop(message.request_id, None) is not None:
                self._report([StepOutput(message.request_id, None, None, FinishReason.ABORT)])
                return
            aborted = self.scheduler.abort(message.request_id)
            if aborted is not None:
                self._report([aborted])

    def _add(self, message: AddRequest, grammar: GrammarState | None) -> None:
        # Whatever one request carries, it may be refused, never take the group down with it.
        try:
            rng = self.sampler.new_request_rng(message.params.seed) if message.params.seed is not None else None
            seq = Sequence(message.request_id, list(message.prompt_ids), len(message.prompt_ids), message.params, rng)
            seq.grammar = grammar
            self.scheduler.add(seq)
        except (RequestError, ValueError, TypeError, OverflowError, RuntimeError) as exc:
            self.outbox.put(RequestRejected(message.request_id, str(exc)))

    def _admit_compiled(self) -> None:
        """Requests whose grammar has compiled join the scheduler; a failed compile is refused."""
        for request_id, (message, compiling) in list(self.compiling.items()):
            if not compiling.done():
                continue
            del self.compiling[request_id]
            try:
                state = compiling.result()
            except Exception as exc:  # xgrammar's message names what is wrong with the spec
                self.outbox.put(RequestRejected(request_id, f"response_format: {exc}"))
                continue
            self._add(message, state)

    def _step(self) -> None:
        """Plan and launch the next step, then read back the previous one (overlap scheduling).

        With overlap the host plans step N+1 while the GPU still runs step N; without it each
        step is read back right after its launch.
        """
        self.times.start()
        if self.in_flight is not None and self.in_flight.step.needs_previous_token:
            # Penalties and grammars read the tokens generated so far: the newest must be on
            # the host before the next step is planned (no overlap while such requests run).
            self._read_back(self.in_flight)
            self.in_flight = None
        step = self.scheduler.schedule()
        self._report(self.scheduler.take_finished_in_planning())
        self.times.lap("schedule")
        launched = self._launch(step) if step is not None else None
        self.times.lap("launch")
        if self.in_flight is not None:
            self._read_back(self.in_flight)
        self.in_flight = launched
        if launched is not None and not self.overlap:
            self._read_back(launched)
            self.in_flight = None

    def _launch(self, step: ScheduledStep) -> InFlight:
        gpu = self.times.gpu_span()
        launched = self._launch_step(step)
        if gpu is not None:
            gpu.close()
            launched.gpu = gpu
        return launched

    def _launch_step(self, step: ScheduledStep) -> InFlight:
        batch = step.batch
        self.group.broadcast_object(batch)
        logits = self.runner.forward(batch)
        sampled = batch.num_sampled  # the logits of sampling rows come first, then prompt positions
        prompt = None
        if step.prompt_rows:
            targets = to_device(np.asarray(step.prompt_targets, dtype=np.int64), logits.device)
            prompt = PendingPromptLogprobs(logits[sampled:], targets, step.prompt_top_n)
        if not step.sampled:
            return InFlight(step, None, prompt)
        seqs = [row.seq for row in step.sampled]
        adjusted = self._constrained_logits(step, logits[:sampled])
        samples = self.sampler.sample(adjusted, [s.params for s in seqs], [s.rng for s in seqs])
        self.runner.record_samples(batch, self.group.broadcast_tensor(samples.tokens))
        return InFlight(step, samples, prompt)

    def _constrained_logits(self, step: ScheduledStep, logits: torch.Tensor) -> torch.Tensor:
        """The sampling rows' logits after penalties, biases and grammars (only when some row asks:
        the common step pays nothing, not even a look at the rows' tokens)."""
        step_logits = logits
        if step.adjusts_logits:
            histories = [
                RowHistory(
                    row.seq.params,
                    row.seq.token_ids[: row.seq.prompt_len],
                    row.seq.token_ids[row.seq.prompt_len : row.token_index],
                )
                for row in step.sampled
            ]
            logits = adjust_logits(logits, histories, self.eos_token_ids)
        if step.constrained:
            grammars = [row.seq.grammar if isinstance(row.seq.grammar, GrammarState) else None for row in step.sampled]
            if logits is step_logits:  # never mask the step's own (maybe a graph's static) output
                logits = logits.to(torch.float32, copy=True)
            logits = self.grammar.mask(logits, grammars)
        return logits

    def _read_back(self, launched: InFlight) -> None:
        results = launched.samples.results() if launched.samples is not None else []
        prompt = launched.prompt_logprobs.results() if launched.prompt_logprobs is not None else None
        self.times.count_gpu(launched.gpu)  # may wait out the step's last kernels: part of "wait"
        self.times.lap("wait")
        self._report(self.scheduler.update(launched.step, results, prompt))
        self.times.lap("update")
        self.times.count(launched.step.batch.is_decode_only)

    def _report(self, outputs: list) -> None:  # type: ignore[type-arg]
        if outputs:
            self.outbox.put(
                StepOutputs(
                    outputs,
                    cache=self.scheduler.cache_stats(),
                    running=self.scheduler.num_running,
                    waiting=len(self.scheduler.waiting),
                )
            )


def _drain(inbox: multiprocessing.queues.Queue, wait_s: float) -> list[Any]:  # type: ignore[type-arg]
    messages: list[Any] = []
    try:
        messages.append(inbox.get(timeout=wait_s) if wait_s > 0 else inbox.get_nowait())
        while True:
            messages.append(inbox.get_nowait())
    except queue.Empty:
        pass
    return messages

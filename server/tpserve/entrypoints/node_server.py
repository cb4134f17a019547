"""Process life cycle of one node: start the ranks, serve HTTP, watch the group, exit with it.

Node 0 hosts the rendezvous store, runs rank 0's front end (OpenAI API, tokenizer) and decides
readiness for the whole group. Nodes k > 0 run their ranks and a health endpoint. When any rank
dies or stops heartbeating, every node flips `/health` to 503 and exits non-zero: NCCL cannot
re-admit a rank, so recovery is a restart of the whole group (the operator's job).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from types import FrameType
from typing import Any

import uvicorn
from fastapi import FastAPI

from ..distributed.status_board import GroupWatcher, connect_store
from ..engine.launcher import LocalRanks, with_rendezvous_port
from ..engine.sampling import SamplingParams
from .admission import Admission
from .cli import ServerArgs
from .engine_client import AsyncEngine
from .health import GroupMonitor
from .http_app import create_api_app, create_worker_app
from .metrics import ServerMetrics
from .openai_serving import ChatParsers, OpenAIServing

log = logging.getLogger(__name__)

MONITOR_INTERVAL_S = 0.5  # also how stale /health may be
FAILURE_GRACE_S = 2.0  # keep answering 503 briefly so probes and clients see why
FLUSH_S = 0.5  # after the drain: let the last responses reach their clients
# Nodes k > 0 stop when node 0 has stopped the group; this long past the drain they stop anyway.
WORKER_DRAIN_MARGIN_S = 10.0


class _DrainingServer(uvicorn.Server):
    """uvicorn, but the first SIGTERM/SIGINT starts the node's drain instead of closing at once;
    a second one stops at once."""

    def __init__(self, config: uvicorn.Config, start_drain: Callable[[], bool]) -> None:
        super().__init__(config)
        self._start_drain = start_drain
        self._draining = False

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if not self._draining and self._start_drain():
            self._draining = True
            return
        super().handle_exit(sig, frame)


class NodeServer:
    def __init__(self, args: ServerArgs) -> None:
        self.args = args
        config = args.engine
        if config.node_rank == 0:
            config = with_rendezvous_port(config)
        self.config = config
        self.metrics = ServerMetrics(args.served_model_name, config.node_rank, args.vllm_metric_names)
        if config.node_rank == 0:
            self.metrics.ranks_total.set(config.tp)
        self.ranks: LocalRanks | None = None
        self.monitor: GroupMonitor | None = None
        self.engine: AsyncEngine | None = None
        self.serving: OpenAIServing | None = None
        self.exit_code = 0
        self._server: uvicorn.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task[None]] = set()  # the loop keeps only weak references
        self.admission = Admission(args.max_queued_requests, self._waiting, self.metrics.rejected)

    # -- entry -----------------------------------------------------------------------------------
    def run(self) -> int:
        started = time.monotonic()
        self.ranks = LocalRanks(self.config, self.args.log_level, self.args.log_format)
        if self.config.node_rank == 0:
            watched = list(range(self.config.tp))
        else:
            watched = sorted({0, *self.ranks.ranks})
        self.monitor = GroupMonitor(self.ranks, self.config.tp, watched)
        app = self._build_app()
        self._server = _DrainingServer(
            uvicorn.Config(
                app,
                host=self.args.host,
                port=self.args.port,
                log_level=self.args.log_level,
                log_config=None,  # uvicorn's own lines go through our handler, in our format
                access_log=False,
                timeout_graceful_shutdown=5,  # the drain already waited for in-flight requests
            ),
            self._signal_drain,
        )
        log.info(
            "node %d: starting ranks %s; HTTP on %s:%d",
            self.config.node_rank,
            self.ranks.ranks,
            self.args.host,
            self.args.port,
        )
        try:
            self._server.run()
        finally:
            self._stop_ranks()
            log.info(
                "node %d: stopped after %.1fs (exit %d)",
                self.config.node_rank,
                time.monotonic() - started,
                self.exit_code,
            )
        return self.exit_code

    def _stop_ranks(self) -> None:
        """Let the ranks finish and release what they hold (NCCL, shared memory). Idempotent."""
        if self.engine is not None:
            self.engine.close()
        if self.ranks is not None:
            self.ranks.shutdown()

    def _build_app(self) -> FastAPI:
        assert self.monitor is not None
        if self.config.node_rank == 0:
            app = create_api_app(
                lambda: self.serving,
                self.monitor,
                self.metrics,
                self.args.api_key,
                self.args.model.eos_token_ids,
                self._one_token_generation,
                self._refresh_metrics,
                self.admission,
                self.args.request_timeout_s,
            )
        else:
            app = create_worker_app(self.monitor, self.metrics)
        inner: Any = app
        while not isinstance(inner, FastAPI):  # unwrap the ASGI middleware around the app
            inner = inner.app
        inner.router.lifespan_context = self._lifespan
        return app

    @contextlib.asynccontextmanager
    async def _lifespan(self, _: FastAPI) -> AsyncIterator[None]:
        self._loop = asyncio.get_running_loop()
        tasks = [asyncio.create_task(self._watch())]
        if self.config.node_rank == 0:
            tasks.append(asyncio.create_task(self._start_engine()))
        else:
            tasks.append(asyncio.create_task(self._connect_to_node0()))
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            # uvicorn re-raises SIGTERM/SIGINT once its shutdown is done, which ends the process
            # before `run`'s finally: stop the ranks here, while shutting down.
            await asyncio.to_thread(self._stop_ranks)
            log.info("node %d: ranks stopped", self.config.node_rank)

    # -- drain on SIGTERM ----------------------------------------------------------------------
    def _waiting(self) -> int:
        return self.engine.waiting if self.engine is not None else 0

    def _signal_drain(self) -> bool:
        """From the signal handler: start the drain on the loop; False if there is nothing to drain yet."""
        if self._loop is None or self._loop.is_closed():
            return False
        self._loop.call_soon_threadsafe(lambda: self._background(self._drain()))
        return True

    def _background(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _drain(self) -> None:
        """Unready at once (the Service stops routing here), refuse new work, let in-flight requests
        finish for up to --shutdown-timeout, then stop. Node 0 stopping its ranks stops the group;
        other nodes wait for that, so no rank leaves while node 0 still serves."""
        assert self.monitor is not None and self._server is not None
        timeout = self.args.shutdown_timeout_s
        self.monitor.start_draining()
        self.admission.draining = True
        engine = self.engine
        log.info("node %d: draining (up to %.0fs)", self.config.node_rank, timeout)
        if self.config.node_rank == 0:
            deadline = time.monotonic() + timeout
            while engine is not None and engine.in_flight and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            if engine is not None and engine.in_flight:
                log.warning("drain: %d requests still running after %.0fs; ending them", engine.in_flight, timeout)
                engine.end_all(f"the server shut down before the request finished (--shutdown-timeout {timeout:g} s)")
            await asyncio.sleep(FLUSH_S)
        else:
            deadline = time.monotonic() + timeout + WORKER_DRAIN_MARGIN_S
            while not self.monitor.failed and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
        log.info("node %d: drained", self.config.node_rank)
        self._server.should_exit = True

    # -- node 0 ----------------------------------------------------------------------------------
    async def _start_engine(self) -> None:
        assert self.ranks is not None and self.monitor is not None and self.ranks.store is not None
        self.monitor.watcher = GroupWatcher(self.ranks.store, self.config.tp)
        tokenizer = await asyncio.to_thread(self.config.load_tokenizer)
        self.engine = AsyncEngine(self.ranks, asyncio.get_running_loop(), self.admission)
        while self.engine.info is None:
            if self.monitor.failed:
                return
            await asyncio.sleep(0.1)
        self.monitor.engine_ready = True
        self.metrics.set_num_pages(self.engine.info.num_pages)
        serving = OpenAIServing(
            self.engine,
            tokenizer,
            self.args.served_model_name,
            self.args.model.vocab_size,
            self.metrics,
            ChatParsers.of(self.args.tool_call_parser, self.args.reasoning_parser, tokenizer),
        )
        started = time.monotonic()
        self.serving = serving
        await self._one_token_generation()
        self.monitor.warmed_up = True
        log.info("warm-up generation across %d ranks took %.2fs; ready", self.config.tp, time.monotonic() - started)

    async def _one_token_generation(self) -> None:
        assert self.engine is not None
        request_id = self.engine.new_request_id("probe")
        async for _ in self.engine.generate(
            request_id, [0], SamplingParams(max_tokens=1, temperature=0, ignore_eos=True)
        ):
            pass

    # -- nodes k > 0 -----------------------------------------------------------------------------
    async def _connect_to_node0(self) -> None:
        assert self.monitor is not None
        store = await asyncio.to_thread(connect_store, self.config.dist_init_addr, self.config.dist_timeout)
        self.monitor.watcher = GroupWatcher(store, self.config.tp)

    # -- all nodes -------------------------------------------------------------------------------
    def _refresh_metrics(self) -> None:
        assert self.monitor is not None
        if self.config.node_rank == 0:
            self.metrics.ranks_ready.set(self.monitor.ranks_ready)
        local = set(self.monitor.local.ranks)
        self.metrics.local_ranks.ranks = [r for r in self.monitor.latest.ranks if r.rank in local]
        self.metrics.loop_tasks.set(len(asyncio.all_tasks()))
        if self.engine is not None:
            load = self.engine.load
            self.metrics.observe_load(load.running, load.waiting)
            self.metrics.observe_cache(load.cache)

    async def _watch(self) -> None:
        """Poll group health; once the group has failed, report it briefly, then exit non-zero."""
        assert self.monitor is not None and self._server is not None
        while True:
            report = await asyncio.to_thread(self.monitor.check)
            self._refresh_metrics()
            if self.engine is not None and self.engine.failure:
                self.monitor.fail(self.engine.failure)
            if (report.failed or self.monitor.failed) and self.monitor.draining:
                log.info("group stopped while draining: %s", self.monitor.failed)
                return  # the drain ends the process
            if report.failed or self.monitor.failed:
                log.error("group failed: %s; exiting", self.monitor.failed)
                if self.engine is not None:
                    self.engine.fail_all(str(self.monitor.failed))
                self.exit_code = 1
                await asyncio.sleep(FAILURE_GRACE_S)
                self._server.should_exit = True
                return
            await asyncio.sleep(MONITOR_INTERVAL_S)


def serve(args: ServerArgs) -> int:
    return NodeServer(args).run()  # server_args has set up logging, before any download


__all__ = ["NodeServer", "serve"]

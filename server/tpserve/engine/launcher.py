"""Start this node's rank processes and watch them.

Node k runs ranks k*L .. k*L+L-1 (L = tp / nnodes). Only node 0 talks to rank 0's inbox.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import queue
import socket
import time
from dataclasses import replace
from typing import Any

from ..distributed.status_board import host_store, publish_model_commit
from .config import EngineConfig
from .messages import EngineReady, RankFailed, RankReady, Shutdown
from .worker import rank_main

log = logging.getLogger(__name__)


class EngineError(RuntimeError):
    """The rank group failed (a rank died or reported an error)."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def with_rendezvous_port(config: EngineConfig) -> EngineConfig:
    host, _, port = config.dist_init_addr.rpartition(":")
    if port in ("", "0"):
        return replace(config, dist_init_addr=f"{host or '127.0.0.1'}:{free_port()}")
    return config


class LocalRanks:
    """The rank processes of one node."""

    def __init__(self, config: EngineConfig, log_level: str = "INFO", log_format: str = "text") -> None:
        self.config = config
        # Node 0 hosts the status board / rendezvous store before any rank tries to reach it.
        self.store = host_store(config.dist_init_addr, config.dist_timeout) if config.node_rank == 0 else None
        if self.store is not None and config.model_commit is not None:
            publish_model_commit(self.store, config.model_commit)
        ctx = mp.get_context("spawn")
        self.status: Any = ctx.Queue()  # rank -> front end: readiness, failures, step outputs
        self.inbox: Any = ctx.Queue() if config.node_rank == 0 else None
        first = config.node_rank * config.ranks_per_node
        self.ranks = list(range(first, first + config.ranks_per_node))
        self.processes = [
            ctx.Process(
                target=rank_main,
                args=(config, rank, self.status, self.inbox if rank == 0 else None, log_level, log_format),
                name=f"tpserve-rank{rank}",
                daemon=True,
            )
            for rank in self.ranks
        ]
        for process in self.processes:
            process.start()
        self.ready_ranks: set[int] = set()
        self.engine_info: EngineReady | None = None
        self.failure: str | None = None
        self._shut_down = False

    def dead_ranks(self) -> list[int]:
        return [rank for rank, p in zip(self.ranks, self.processes) if not p.is_alive()]

    def observe(self, message: Any) -> Any:
        """Record readiness/failure messages; returns the message for the caller's own use."""
        if isinstance(message, RankReady):
            self.ready_ranks.add(message.rank)
        elif isinstance(message, EngineReady):
            self.engine_info = message
        elif isinstance(message, RankFailed):
            self.failure = self.failure or f"rank {message.rank}: {message.message}"
        return message

    def wait_ready(self, timeout_s: float) -> EngineReady | None:
        """Block until every local rank is ready (and, on node 0, the engine); raise on failure."""
        deadline = time.monotonic() + timeout_s
        while len(self.ready_ranks) < len(self.ranks) or (self.inbox is not None and self.engine_info is None):
            self.raise_if_failed()
            try:
                self.observe(self.status.get(timeout=min(0.5, max(0.0, deadline - time.monotonic()))))
            except queue.Empty:
                if time.monotonic() > deadline:
                    raise EngineError(f"ranks not ready after {timeout_s:.0f}s") from None
        return self.engine_info

    def raise_if_failed(self) -> None:
        if self.failure:
            raise EngineError(self.failure)
        dead = self.dead_ranks()
        if dead:
            # A rank may have posted its reason just before exiting.
            try:
                while True:
                    self.observe(self.status.get(timeout=0.2))
            except queue.Empty:
                pass
            raise EngineError(self.failure or f"rank(s) {dead} exited")

    def shutdown(self, timeout_s: float = 10.0) -> None:
        """Ask rank 0 to stop the group, wait for every local rank, kill stragglers. Idempotent."""
        if self._shut_down:
            return
        self._shut_down = True
        if self.inbox is not None and not self.dead_ranks():
            self.inbox.put(Shutdown())
        deadline = time.monotonic() + timeout_s
        for process in self.processes:
            process.join(max(0.1, deadline - time.monotonic()))
        for process in self.processes:
            if process.is_alive():
                process.kill()
                process.join(5)
        for q in (self.status, self.inbox):
            if q is not None:
                q.close()
                q.cancel_join_thread()

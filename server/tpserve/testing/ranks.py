"""Run one function on N local ranks joined into a tpserve TPGroup; rank 0's return value comes back.

Benchmarks and GPU checks use this to drive ModelRunner shards directly (one process per GPU,
as the server runs them) without the HTTP front end.
"""

from __future__ import annotations

import multiprocessing as mp
import traceback
from collections.abc import Callable
from typing import Any

from torch._C._distributed_c10d import TCPStore

from tpserve.distributed.group import TPGroup, destroy_tp_group, init_tp_group
from tpserve.engine.launcher import free_port

RankFn = Callable[..., Any]


def run_on_ranks(world_size: int, device_kind: str, fn: RankFn, *args: Any, timeout_s: float = 900) -> Any:
    """fn(group, *args) on every rank; returns rank 0's result, raises if any rank failed."""
    port = free_port()
    context = mp.get_context("spawn")
    results = context.Queue()
    procs = [
        context.Process(target=_rank_entry, args=(rank, world_size, device_kind, port, results, fn, args))
        for rank in range(world_size)
    ]
    for proc in procs:
        proc.start()
    outcomes: dict[int, tuple[str, Any]] = {}
    try:
        while len(outcomes) < world_size:
            rank, status, value = results.get(timeout=timeout_s)
            outcomes[rank] = (status, value)
            if status != "ok":
                break
    finally:
        for proc in procs:
            proc.join(timeout=60)
            if proc.is_alive():
                proc.kill()
    failures = [value for status, value in outcomes.values() if status != "ok"]
    if failures:
        raise RuntimeError("a rank failed:\n" + "\n".join(failures))
    return outcomes[0][1]


def _rank_entry(
    rank: int, world_size: int, device_kind: str, port: int, results: Any, fn: RankFn, args: tuple[Any, ...]
) -> None:
    store = TCPStore("127.0.0.1", port, world_size, rank == 0)
    group: TPGroup | None = None
    try:
        group = init_tp_group(store, world_size, rank, device_kind, local_rank=rank, timeout_s=300, single_node=True)
        value = fn(group, *args)
        results.put((rank, "ok", value if rank == 0 else None))
    except BaseException:
        results.put((rank, "error", f"rank {rank}: {traceback.format_exc()}"))
        raise
    finally:
        if group is not None:
            destroy_tp_group(group)

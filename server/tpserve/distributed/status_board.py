"""The group's status board: every rank's startup phase and heartbeat, kept in a TCPStore.

Node 0's front end hosts the store at `--dist-init-addr`; every rank (on every node) connects to
it, uses it for the torch.distributed rendezvous, and writes its phase and a heartbeat counter
there. Front ends read it to answer `/health` and to notice a dead rank within seconds, without
entering any collective.
"""

from __future__ import annotations

import datetime
import json
import logging
import threading
import time
from dataclasses import dataclass
from enum import Enum

# torch.distributed re-exports TCPStore without declaring it; the typed home is torch._C.
from torch._C._distributed_c10d import TCPStore

log = logging.getLogger(__name__)
HEARTBEAT_INTERVAL_S = 0.5
HEARTBEAT_TIMEOUT_S = 3.0
_RANK_KEY = "tpserve/rank/{}"


class Phase(str, Enum):
    RENDEZVOUS = "rendezvous"
    LOADING_WEIGHTS = "loading_weights"
    ALLOCATING_KV_CACHE = "allocating_kv_cache"
    CAPTURING_CUDA_GRAPHS = "capturing_cuda_graphs"
    WAITING_FOR_GROUP = "waiting_for_group"
    READY = "ready"
    FAILED = "failed"


def host_store(host_port: str, timeout_s: float) -> TCPStore:
    _, port = split_host_port(host_port)
    return TCPStore("0.0.0.0", port, None, True, timeout=datetime.timedelta(seconds=timeout_s), wait_for_workers=False)


def connect_store(host_port: str, timeout_s: float) -> TCPStore:
    host, port = split_host_port(host_port)
    return TCPStore(host, port, None, False, timeout=datetime.timedelta(seconds=timeout_s))


MODEL_COMMIT_KEY = "tpserve/model_commit"


def publish_model_commit(store: TCPStore, commit: str) -> None:
    """Node 0: the hub commit every node must load (see models.hub)."""
    store.set(MODEL_COMMIT_KEY, commit)


def wait_model_commit(host_port: str, attempt_s: float = 30.0) -> str:
    """Nodes k > 0: the commit node 0 resolved. Node 0 publishes it once its own download is done
    (it hosts the store only then), which may take long for a large model: wait as long as it takes."""
    started = time.monotonic()
    while True:
        attempt = time.monotonic()
        try:
            store = connect_store(host_port, attempt_s)
            return bytes(store.get(MODEL_COMMIT_KEY)).decode()
        except (RuntimeError, TimeoutError):  # not up yet, or no commit yet
            # A refused connection can fail at once: never spin faster than once a second.
            time.sleep(max(0.0, 1.0 - (time.monotonic() - attempt)))
            log.info(
                "waiting for node 0 (%s) to resolve the model: %.0fs so far", host_port, time.monotonic() - started
            )


def split_host_port(host_port: str) -> tuple[str, int]:
    host, _, port = host_port.rpartition(":")
    return host or "127.0.0.1", int(port)


class RankReporter:
    """Inside a rank process: publish phase changes and a heartbeat every half second."""

    def __init__(self, store_addr: str, rank: int, timeout_s: float) -> None:
        self.rank = rank
        self._store = connect_store(store_addr, timeout_s)
        # The heartbeat thread gets its own connection: store clients are not shared across threads.
        self._beat_store = connect_store(store_addr, timeout_s)
        self._phase = Phase.RENDEZVOUS
        self._message = ""
        self._beats = 0
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._publish(self._store)
        threading.Thread(target=self._beat, name=f"heartbeat-rank{rank}", daemon=True).start()

    @property
    def store(self) -> TCPStore:
        return self._store

    def set_phase(self, phase: Phase, message: str = "") -> None:
        with self._lock:
            self._phase, self._message = phase, message
        self._publish(self._store)

    def stop(self) -> None:
        self._stopped.set()

    def _publish(self, store: TCPStore) -> None:
        with self._lock:
            value = json.dumps({"phase": self._phase.value, "beat": self._beats, "message": self._message})
        store.set(_RANK_KEY.format(self.rank), value)

    def _beat(self) -> None:
        while not self._stopped.wait(HEARTBEAT_INTERVAL_S):
            with self._lock:
                self._beats += 1
            try:
                self._publish(self._beat_store)
            except Exception:  # the store is gone: node 0 died; the watcher side handles it
                return


@dataclass(frozen=True)
class RankStatus:
    rank: int
    phase: str  # a Phase value, or "missing" before the rank connected
    alive: bool  # heartbeat advanced within HEARTBEAT_TIMEOUT_S
    message: str = ""
    heartbeat_age_s: float = 0.0  # since the heartbeat last advanced (as this watcher saw it)


class GroupWatcher:
    """In a front end: read every rank's status; a rank is dead once its heartbeat stalls."""

    def __init__(self, store: TCPStore, world_size: int) -> None:
        self._store = store
        self._store.set_timeout(datetime.timedelta(seconds=2))
        self.world_size = world_size
        self._last_beat: dict[int, tuple[int, float]] = {}

    def snapshot(self) -> list[RankStatus]:
        keys = [_RANK_KEY.format(r) for r in range(self.world_size)]
        statuses = []
        now = time.monotonic()
        for rank, key in enumerate(keys):
            if not self._store.check([key]):
                statuses.append(RankStatus(rank, "missing", alive=True))
                continue
            record = json.loads(self._store.get(key))
            beat = int(record["beat"])
            previous = self._last_beat.get(rank)
            if previous is None or previous[0] != beat:
                self._last_beat[rank] = (beat, now)
            age = now - self._last_beat[rank][1]
            alive = age < HEARTBEAT_TIMEOUT_S
            statuses.append(RankStatus(rank, record["phase"], alive, record.get("message", ""), age))
        return statuses

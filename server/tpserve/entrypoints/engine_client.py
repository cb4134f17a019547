"""The HTTP front end's handle on rank 0: submit requests, stream their tokens, abort them.

A reader thread drains rank 0's output queue and hands each step's outputs to the asyncio loop
in one call, so the event loop never blocks on the queue and never touches the model.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import queue
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from ..core.errors import EngineUnavailable
from ..engine.launcher import LocalRanks
from ..engine.messages import AbortRequest, AddRequest, EngineReady, RankFailed, RequestRejected, StepOutputs
from ..engine.sampling import SamplingParams
from ..engine.scheduler import CacheStats, RequestError, StepOutput
from .admission import Admission

log = logging.getLogger(__name__)


@dataclass
class EngineLoad:
    cache: CacheStats = field(default_factory=CacheStats)
    running: int = 0
    waiting: int = 0


class AsyncEngine:
    def __init__(self, ranks: LocalRanks, loop: asyncio.AbstractEventLoop, admission: Admission | None = None) -> None:
        assert ranks.inbox is not None, "only node 0 talks to rank 0"
        self.ranks = ranks
        self.loop = loop
        self.load = EngineLoad()
        self.admission = admission
        self.info: EngineReady | None = None
        self.failure: str | None = None
        self._streams: dict[str, asyncio.Queue[StepOutput | RequestRejected | EngineUnavailable]] = {}
        self._ids = itertools.count()
        self._stop = threading.Event()
        self._reader = threading.Thread(target=self._read_outputs, name="engine-output-reader", daemon=True)
        self._reader.start()

    def new_request_id(self, prefix: str) -> str:
        return f"{prefix}-{next(self._ids)}"

    async def generate(
        self, request_id: str, prompt_ids: list[int], params: SamplingParams
    ) -> AsyncIterator[StepOutput]:
        """Yields the request's outputs until it finishes; aborts it if the consumer stops early."""
        if self.failure is not None:
            raise EngineUnavailable(f"the group failed: {self.failure}")
        if self.admission is not None:
            self.admission.admit_submission()
        stream: asyncio.Queue[StepOutput | RequestRejected | EngineUnavailable] = asyncio.Queue()
        self._streams[request_id] = stream
        finished = False
        try:
            self.ranks.inbox.put(AddRequest(request_id, prompt_ids, params))
            while True:
                item = await stream.get()
                if isinstance(item, EngineUnavailable):
                    finished = True  # end_all aborted it, where anything was left to abort
                    raise item
                if isinstance(item, RequestRejected):
                    finished = True
                    raise RequestError(item.message)
                finished = item.finish_reason is not None
                yield item
                if finished:
                    return
        finally:
            self._streams.pop(request_id, None)
            if not finished:
                self.abort(request_id)

    def abort(self, request_id: str) -> None:
        self.ranks.inbox.put(AbortRequest(request_id))

    @property
    def in_flight(self) -> int:
        return len(self._streams)

    @property
    def waiting(self) -> int:
        """Sequences submitted but not running yet, as of rank 0's latest step report."""
        return max(0, len(self._streams) - self.load.running)

    def fail_all(self, reason: str) -> None:
        """The group failed: end every open request with an error now, rather than leave its
        client waiting for tokens that will never come. Call on the event loop."""
        self.failure = self.failure or reason
        self.end_all(f"the group failed: {self.failure}", abort=False)  # nothing is left to abort

    def end_all(self, message: str, abort: bool = True) -> None:
        """End every open request with `message` (503, or an error event mid-stream)."""
        for request_id, stream in self._streams.items():
            stream.put_nowait(EngineUnavailable(message))
            if abort:
                self.abort(request_id)

    def close(self) -> None:
        self._stop.set()

    def _read_outputs(self) -> None:
        while not self._stop.is_set():
            try:
                message = self.ranks.observe(self.ranks.status.get(timeout=0.5))
            except queue.Empty:
                continue
            except (EOFError, OSError, ValueError):
                return  # queue closed at shutdown
            if isinstance(message, EngineReady):
                self.info = message
            elif isinstance(message, RankFailed):
                self.failure = self.failure or f"rank {message.rank}: {message.message}"
            elif isinstance(message, (StepOutputs, RequestRejected)):
                self.loop.call_soon_threadsafe(self._dispatch, message)

    def _dispatch(self, message: StepOutputs | RequestRejected) -> None:
        if isinstance(message, RequestRejected):
            stream = self._streams.get(message.request_id)
            if stream is not None:
                stream.put_nowait(message)
            return
        self.load = EngineLoad(message.cache, message.running, message.waiting)
        for output in message.outputs:
            stream = self._streams.get(output.request_id)
            if stream is not None:
                stream.put_nowait(output)

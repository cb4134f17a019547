"""Messages between the front end (offline API or HTTP server) and the rank processes."""

from __future__ import annotations

from dataclasses import dataclass

from .sampling import SamplingParams
from .scheduler import CacheStats, StepOutput


# Front end -> rank 0 ------------------------------------------------------------------------
@dataclass(frozen=True)
class AddRequest:
    request_id: str
    prompt_ids: list[int]
    params: SamplingParams


@dataclass(frozen=True)
class AbortRequest:
    request_id: str


@dataclass(frozen=True)
class Shutdown:
    pass


# Rank processes -> front end ----------------------------------------------------------------
@dataclass(frozen=True)
class RankReady:
    rank: int
    seconds: float


@dataclass(frozen=True)
class EngineReady:
    """Sent by rank 0 once every rank has its weights and KV cache."""

    num_pages: int
    page_size: int
    max_model_len: int
    max_running: int


@dataclass(frozen=True)
class RankFailed:
    rank: int
    message: str


@dataclass(frozen=True)
class RequestRejected:
    request_id: str
    message: str


@dataclass(frozen=True)
class StepOutputs:
    outputs: list[StepOutput]
    cache: CacheStats
    running: int
    waiting: int

    @property
    def pages_used(self) -> int:
        return self.cache.pages_in_use


# Rank 0 -> other ranks, over the control group ------------------------------------------------
@dataclass(frozen=True)
class Idle:
    """Heartbeat while there is no work: keeps every rank's blocking broadcast within its timeout."""


@dataclass(frozen=True)
class Stop:
    pass

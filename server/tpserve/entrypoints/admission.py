"""Which generation requests the leader takes now: a bounded waiting queue, and none while draining.

Beyond `--max-queued-requests` waiting requests a client gets 429 with `Retry-After` (memory stays
bounded however many arrive); once SIGTERM started the drain, every new generation request gets 503
while the ones in flight finish.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

RETRY_AFTER_S = 1  # a queue of this engine moves within seconds; clients back off from there


class QueueFull(Exception):
    """429: the waiting queue is at its bound."""


class Draining(Exception):
    """503: the server is shutting down and takes no new work."""


@dataclass
class Admission:
    max_queued: int
    waiting: Callable[[], int]  # requests (choices) submitted to the engine but not yet running
    rejected: Callable[[str], None]  # counts a refusal by reason
    draining: bool = False

    def admit(self, choices: int) -> None:
        """A new request's check, before its response starts: raise unless it may queue now."""
        if self.draining:
            self.rejected("draining")
            raise Draining("the server is shutting down; retry on another replica")
        self._check_queue(choices)

    def admit_submission(self) -> None:
        """The exact bound, where one sequence is handed to the engine: requests that passed
        `admit` together (it runs before tokenization finishes) cannot overfill the queue."""
        self._check_queue(1)

    def _check_queue(self, sequences: int) -> None:
        if self.waiting() + sequences > self.max_queued:
            self.rejected("queue_full")
            raise QueueFull(
                f"the server's waiting queue is full ({self.max_queued} requests, --max-queued-requests); "
                f"retry after {RETRY_AFTER_S} s"
            )

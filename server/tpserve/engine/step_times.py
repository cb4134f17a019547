"""Where rank 0's time goes per step, logged when the engine stops (and read by the benchmarks).

With overlap scheduling the host work of a step should hide behind the GPU's: the time spent
waiting for a step's tokens is then the GPU's share, the rest is host time the GPU may wait on.
Counting costs two clock reads per phase, so it is always on.
"""

from __future__ import annotations

import time
from collections import defaultdict

PHASES = ("schedule", "launch", "wait", "update")


class StepTimes:
    def __init__(self) -> None:
        self.seconds: defaultdict[str, float] = defaultdict(float)
        self.steps = 0
        self.decode_steps = 0
        self._mark = time.perf_counter()

    def start(self) -> None:
        self._mark = time.perf_counter()

    def lap(self, phase: str) -> None:
        """Charge the time since the last mark to `phase`."""
        now = time.perf_counter()
        self.seconds[phase] += now - self._mark
        self._mark = now

    def count(self, decode_only: bool) -> None:
        self.steps += 1
        self.decode_steps += decode_only

    def summary(self) -> str:
        if not self.steps:
            return "no steps"
        per_step = ", ".join(f"{p} {1e3 * self.seconds[p] / self.steps:.3f}" for p in PHASES)
        return f"{self.steps} steps ({self.decode_steps} decode-only); ms per step: {per_step}"

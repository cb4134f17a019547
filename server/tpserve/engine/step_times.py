"""Where rank 0's time goes per step, logged when the engine stops (and read by the benchmarks).

With overlap scheduling the host work of a step should hide behind the GPU's: the time spent
waiting for a step's tokens is then the GPU's share, the rest is host time the GPU may wait on.
Counting costs two clock reads per phase, so it is always on.
"""

from __future__ import annotations

import contextlib
import cProfile
import pstats
import time
from collections import defaultdict
from collections.abc import Iterator

PHASES = ("schedule", "launch", "wait", "update")
# Set to a file path to profile the leader loop's host code with cProfile; the stats are written
# there (and the top functions to PATH.txt) when the engine stops. For finding host time per
# step on a GPU machine; it slows the loop down, so never for timing.
HOST_PROFILE_ENV = "TPSERVE_HOST_PROFILE"


@contextlib.contextmanager
def host_profile(path: str | None) -> Iterator[None]:
    if not path:
        yield
        return
    profiler = cProfile.Profile()
    profiler.enable()
    try:
        yield
    finally:
        profiler.disable()
        profiler.dump_stats(path)
        with open(f"{path}.txt", "w") as report:
            stats = pstats.Stats(profiler, stream=report).sort_stats("tottime")
            stats.print_stats(40)
            stats.sort_stats("cumulative").print_stats(40)


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

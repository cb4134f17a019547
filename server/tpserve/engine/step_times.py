"""Where rank 0's time goes per step, logged when the engine stops (and read by the benchmarks).

With overlap scheduling the host work of a step should hide behind the GPU's: the time spent
waiting for a step's tokens is then the GPU's share, the rest is host time the GPU may wait on.
Counting costs two clock reads per phase, so it is always on. On CUDA each step also records two
events on the stream (before its first launch, after its sampling): the sum of those spans is the
GPU's share of the run, and what the wall time has beyond it is time the GPU idled between steps.
"""

from __future__ import annotations

import contextlib
import cProfile
import pstats
import time
from collections import defaultdict
from collections.abc import Iterator

import torch

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


class GpuSpan:
    """From where the stream is when a step starts to launch to the end of its last kernel."""

    def __init__(self) -> None:
        self._start = torch.cuda.Event(enable_timing=True)
        self._end = torch.cuda.Event(enable_timing=True)
        self._start.record()

    def close(self) -> None:
        self._end.record()

    def seconds(self) -> float:
        """Once the step has run (its tokens were read back)."""
        self._end.synchronize()
        return float(self._start.elapsed_time(self._end)) / 1e3


class StepTimes:
    def __init__(self, device: torch.device | None = None) -> None:
        self.seconds: defaultdict[str, float] = defaultdict(float)
        self.steps = 0
        self.decode_steps = 0
        self._mark = time.perf_counter()
        self._cuda = device is not None and device.type == "cuda"
        self.gpu_seconds = 0.0
        self._first_step: float | None = None
        self._last_step = 0.0

    def gpu_span(self) -> GpuSpan | None:
        return GpuSpan() if self._cuda else None

    def count_gpu(self, span: GpuSpan | None) -> None:
        if span is not None:
            self.gpu_seconds += span.seconds()

    def start(self) -> None:
        self._mark = time.perf_counter()
        if self._first_step is None:
            self._first_step = self._mark

    def lap(self, phase: str) -> None:
        """Charge the time since the last mark to `phase`."""
        now = time.perf_counter()
        self.seconds[phase] += now - self._mark
        self._mark = now

    def count(self, decode_only: bool) -> None:
        self.steps += 1
        self.decode_steps += decode_only
        self._last_step = time.perf_counter()

    def summary(self) -> str:
        if not self.steps:
            return "no steps"
        per_step = ", ".join(f"{p} {1e3 * self.seconds[p] / self.steps:.3f}" for p in PHASES)
        summary = f"{self.steps} steps ({self.decode_steps} decode-only); ms per step: {per_step}"
        if self._cuda and self._first_step is not None:
            # Idle periods between runs (no work) count as wall time too: read it on a busy run.
            wall = self._last_step - self._first_step
            summary += (
                f"; GPU {1e3 * self.gpu_seconds / self.steps:.3f} ms per step, "
                f"{100 * self.gpu_seconds / wall if wall > 0 else 0:.1f}% of {wall:.2f}s from first to last step"
            )
        return summary

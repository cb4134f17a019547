"""Which projections a batch-1 decode step runs by the skinny kernel: measured once, at start-up.

On an H200 the skinny kernel beats cuBLAS at one row on some weight shapes (O, QKV, the LM head
of Llama-3.1-8B) and loses on others (gate/up) and at more rows (docs/performance.md). Rather
than a table per GPU, each rank times both on its own weights before any graph is captured and
keeps the faster per weight shape, with the kernel's best block shape for it. The timing runs every
weight of a shape in turn, as a decode step reads them, so that a small weight is not timed from
the L2 cache.

TPSERVE_SKINNY_GEMM: `0` (the default): cuBLAS everywhere; `auto`: the measured choice, at one
row; `1`: the skinny kernel for every projection of 1 to SKINNY_MAX_ROWS rows. `auto` stays
opt-in: on an H200 at the Llama-3.1-8B shape it takes 0.09 ms of kernel time out of a 5 ms batch-1
step (the profiler, two rounds), which the step's time from one process to the next (±0.1 ms)
hides, and its timing adds 5-7 s to start-up (docs/performance.md).
"""

from __future__ import annotations

import functools
import logging
import os
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F

from ..core.errors import ConfigError
from .skinny_gemm import SKINNY_MAX_ROWS, TUNING_CONFIGS, SkinnyConfig, skinny_linear, skinny_supported

log = logging.getLogger(__name__)

MODES = ("0", "auto", "1")
# The skinny kernel must be this much faster to replace cuBLAS: timings of a few µs move by a
# percent or two between runs, and cuBLAS is the well-trodden path.
REQUIRED_GAIN = 0.02


class SkinnyCapable(Protocol):
    """A projection whose forward reads `skinny_rows` (up to how many rows of x take the skinny
    kernel) and `skinny_config` (its block shape; None: the autotuner's)."""

    @property
    def weight(self) -> torch.Tensor: ...

    skinny_rows: int
    skinny_config: SkinnyConfig | None


@dataclass(frozen=True)
class ShapeTiming:
    shape: tuple[int, int]
    weights: int
    cublas_us: float
    skinny_us: float  # at the fastest block shape
    config: SkinnyConfig

    @property
    def skinny_wins(self) -> bool:
        return self.skinny_us < (1 - REQUIRED_GAIN) * self.cublas_us


# Times `calls`, each run once in order, and returns µs per call (CUDA: one graph of all of them).
Timer = Callable[[Sequence[Callable[[], torch.Tensor]]], float]


def skinny_mode() -> str:
    mode = os.environ.get("TPSERVE_SKINNY_GEMM", "0")
    if mode not in MODES:
        raise ConfigError(f"TPSERVE_SKINNY_GEMM={mode!r}: expected one of {', '.join(MODES)}")
    return mode


def choose_skinny_projections(
    projections: Iterable[SkinnyCapable],
    timer: Timer | None = None,
    supported: Callable[[torch.Tensor], bool] = skinny_supported,
) -> list[ShapeTiming]:
    """Sets each projection's `skinny_rows` as the mode says; returns the timings `auto` took.

    `timer` and `supported` stand in for the GPU in tests.
    """
    mode = skinny_mode()
    eligible = [p for p in projections if supported(p.weight)]
    for projection in eligible:
        projection.skinny_rows = SKINNY_MAX_ROWS if mode == "1" else 0
        projection.skinny_config = None
    if mode != "auto" or not eligible:
        return []
    by_shape: dict[tuple[int, int], list[SkinnyCapable]] = defaultdict(list)
    for projection in eligible:
        by_shape[(projection.weight.shape[0], projection.weight.shape[1])].append(projection)
    timings = []
    for shape, group in by_shape.items():
        timing = _time_shape(shape, group, timer or cuda_graph_timer)
        timings.append(timing)
        if timing.skinny_wins:
            for projection in group:
                projection.skinny_rows, projection.skinny_config = 1, timing.config
    return timings


def _time_shape(shape: tuple[int, int], group: list[SkinnyCapable], timer: Timer) -> ShapeTiming:
    weights = [p.weight for p in group]
    x = torch.randn(1, shape[1], dtype=weights[0].dtype, device=weights[0].device)
    cublas: list[Callable[[], torch.Tensor]] = [functools.partial(F.linear, x, w) for w in weights]
    skinny = {c: [functools.partial(skinny_linear, x, w, config=c) for w in weights] for c in TUNING_CONFIGS}
    # Three rounds, each candidate once per round, best of three: a clock or power state that
    # changes mid-way hits every candidate alike.
    cublas_us = float("inf")
    skinny_us = dict.fromkeys(TUNING_CONFIGS, float("inf"))
    for _ in range(3):
        cublas_us = min(cublas_us, timer(cublas))
        for config, calls in skinny.items():
            skinny_us[config] = min(skinny_us[config], timer(calls))
    best = min(skinny_us, key=skinny_us.__getitem__)
    return ShapeTiming(shape, len(weights), cublas_us, skinny_us[best], best)


def cuda_graph_timer(calls: Sequence[Callable[[], torch.Tensor]], replays: int = 20) -> float:
    """Median µs per call of one CUDA graph that runs every call once, as a decode graph would."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # compiles and warms up outside the capture
        for call in calls:
            call()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for call in calls:
            call()
    graph.replay()
    times = []
    for _ in range(replays):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / len(calls))
    del graph
    return float(sorted(times)[len(times) // 2])


def log_choices(rank: int, timings: list[ShapeTiming]) -> None:
    for t in timings:
        log.info(
            "rank %d: batch-1 projection %d x %d (%d weights): cuBLAS %.1f us, skinny kernel %.1f us (%s) -> %s",
            rank,
            t.shape[0],
            t.shape[1],
            t.weights,
            t.cublas_us,
            t.skinny_us,
            "x".join(map(str, t.config)),
            "skinny kernel" if t.skinny_wins else "cuBLAS",
        )

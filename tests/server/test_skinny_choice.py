"""Which projections take the skinny kernel at batch 1: the faster one as measured, per weight shape.

The GPU timer is replaced by a table of timings (nothing here can time a GPU kernel); the
choice, the block shape kept and the modes are what a user of TPSERVE_SKINNY_GEMM sees.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

import pytest
import torch
import torch.nn.functional as F

from tpserve.core.errors import ConfigError
from tpserve.layers import skinny_choice
from tpserve.layers.skinny_gemm import SKINNY_MAX_ROWS, TUNING_CONFIGS, SkinnyConfig


class Projection:
    def __init__(self, n: int, k: int) -> None:
        self.weight = torch.zeros(n, k, dtype=torch.bfloat16)
        self.skinny_rows = 0
        self.skinny_config: SkinnyConfig | None = None


FAST_CONFIG = TUNING_CONFIGS[3]

# µs per call by weight shape: cuBLAS, and the skinny kernel at FAST_CONFIG (every other block shape 1 µs slower).
TIMINGS = {
    (4096, 4096): (10.5, 8.2),  # O: the skinny kernel wins
    (28672, 4096): (57.0, 60.0),  # gate/up: cuBLAS wins
    (6144, 4096): (15.1, 14.9),  # QKV: faster by less than REQUIRED_GAIN, so cuBLAS stays
}


def table_timer(calls: Sequence[Callable[[], torch.Tensor]]) -> float:
    first = calls[0]
    assert isinstance(first, partial)
    shape = tuple(first.args[1].shape)
    cublas_us, skinny_us = TIMINGS[shape]
    if first.func is F.linear:
        return cublas_us
    return skinny_us if first.keywords["config"] == FAST_CONFIG else skinny_us + 1.0


def choose(projections: list[Projection]) -> list[skinny_choice.ShapeTiming]:
    return skinny_choice.choose_skinny_projections(projections, timer=table_timer, supported=lambda w: True)


def test_auto_takes_the_skinny_kernel_only_where_it_is_measured_faster(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TPSERVE_SKINNY_GEMM", "auto")
    o_layers = [Projection(4096, 4096) for _ in range(3)]
    gate_up, qkv = Projection(28672, 4096), Projection(6144, 4096)
    timings = choose([*o_layers, gate_up, qkv])
    assert all(p.skinny_rows == 1 and p.skinny_config == FAST_CONFIG for p in o_layers)  # one row only
    assert (gate_up.skinny_rows, gate_up.skinny_config) == (0, None)
    assert (qkv.skinny_rows, qkv.skinny_config) == (0, None)
    by_shape = {t.shape: t for t in timings}
    assert by_shape[(4096, 4096)].weights == 3
    assert (by_shape[(4096, 4096)].cublas_us, by_shape[(4096, 4096)].skinny_us) == (10.5, 8.2)


def test_cublas_is_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TPSERVE_SKINNY_GEMM", raising=False)
    o_proj = Projection(4096, 4096)  # where auto would take the skinny kernel
    assert choose([o_proj]) == []  # nothing timed
    assert (o_proj.skinny_rows, o_proj.skinny_config) == (0, None)


def test_forced_on_and_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TPSERVE_SKINNY_GEMM", "1")
    gate_up = Projection(28672, 4096)
    assert choose([gate_up]) == []  # nothing timed
    assert (gate_up.skinny_rows, gate_up.skinny_config) == (SKINNY_MAX_ROWS, None)  # the autotuner's block shape
    monkeypatch.setenv("TPSERVE_SKINNY_GEMM", "0")
    assert choose([gate_up]) == []
    assert gate_up.skinny_rows == 0


def test_a_projection_the_kernel_cannot_run_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TPSERVE_SKINNY_GEMM", "1")
    cpu = Projection(4096, 4096)
    assert skinny_choice.choose_skinny_projections([cpu], timer=table_timer) == []  # a CPU weight
    assert cpu.skinny_rows == 0


def test_an_unknown_mode_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TPSERVE_SKINNY_GEMM", "yes")
    with pytest.raises(ConfigError, match=r"TPSERVE_SKINNY_GEMM='yes': expected one of 0, auto, 1"):
        choose([Projection(4096, 4096)])

"""Where a step's GPU time goes: kernel time by kind, and the idle gaps between kernels.

`profile_step` runs a step function under torch.profiler (CUDA activity; kernels replayed from a
CUDA graph are reported one by one on CUDA 12+) and splits each step's wall time into the kernels
of each kind (GEMM, attention, norm, ...) and the rest: launch gaps, host work the GPU waits for.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.profiler import ProfilerActivity, profile

# First matching substring (of the lower-cased kernel name) names the kind.
KINDS: list[tuple[str, tuple[str, ...]]] = [
    ("all-reduce", ("nccl", "allreduce", "all_reduce", "one_shot", "symm")),
    ("attention", ("batchprefill", "batchdecode", "attention", "mergestate", "variable_length_merge")),
    ("norm", ("rmsnorm", "norm")),
    ("rotary", ("rope", "rotary")),
    ("activation", ("act_and_mul", "silu")),
    ("kv write / index", ("index", "scatter", "gather")),
    ("gemm", ("gemm", "gemv", "nvjet", "cutlass", "cublas", "sm90_", "sm80_", "xmma", "splitk")),
    ("copy / elementwise", ("copy", "elementwise", "fill", "cat", "reduce")),
]


def kind_of(kernel_name: str) -> str:
    name = kernel_name.lower()
    for kind, needles in KINDS:
        if any(n in name for n in needles):
            return kind
    return "other"


@dataclass
class StepProfile:
    step_ms: float  # wall time per step, measured without the profiler
    kernels_per_step: float
    kernel_ms: dict[str, float]  # per kind, per step
    kernel_count: dict[str, float]  # per kind, per step
    top: list[tuple[str, float, float]]  # (name, ms per step, calls per step), largest first

    @property
    def busy_ms(self) -> float:
        return sum(self.kernel_ms.values())

    def table(self) -> str:
        lines = [f"{'kind':<22}{'kernels':>9}{'ms':>9}{'share':>8}"]
        for kind, ms in sorted(self.kernel_ms.items(), key=lambda kv: -kv[1]):
            lines.append(f"{kind:<22}{self.kernel_count[kind]:>9.0f}{ms:>9.3f}{ms / self.step_ms:>8.1%}")
        idle = self.step_ms - self.busy_ms
        lines.append(f"{'idle (gaps, host)':<22}{'':>9}{idle:>9.3f}{idle / self.step_ms:>8.1%}")
        lines.append(f"{'step':<22}{self.kernels_per_step:>9.0f}{self.step_ms:>9.3f}")
        lines.append("largest kernels (ms per step, calls per step):")
        for name, ms, calls in self.top:
            lines.append(f"  {ms:8.3f} {calls:6.0f}  {name[:110]}")
        return "\n".join(lines)

    def as_json(self) -> dict:
        return {
            "step_ms": self.step_ms,
            "busy_ms": self.busy_ms,
            "kernels_per_step": self.kernels_per_step,
            "kernel_ms": self.kernel_ms,
            "kernel_count": self.kernel_count,
            "top": self.top,
        }


def _device_time_us(event) -> float:
    # torch renamed cuda_time to device_time; read whichever this version has.
    for attribute in ("self_device_time_total", "self_cuda_time_total"):
        if hasattr(event, attribute):
            return float(getattr(event, attribute))
    raise AttributeError("profiler event has no device time")


def profile_step(step: Callable[[], object], step_ms: float, steps: int = 20, top: int = 12) -> StepProfile:
    """Profile `steps` calls of `step` (each ends with its GPU work done: it synchronizes).

    `step_ms` is the step's time measured without the profiler, which slows launches down:
    what the kernels do not fill of it is idle time.
    """
    for _ in range(3):
        step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
    kernel_ms: dict[str, float] = {}
    kernel_count: dict[str, float] = {}
    per_name: list[tuple[str, float, float]] = []
    for entry in prof.key_averages():
        if entry.device_type != torch.autograd.DeviceType.CUDA:
            continue
        ms = _device_time_us(entry) / 1e3 / steps
        calls = entry.count / steps
        kind = kind_of(entry.key)
        kernel_ms[kind] = kernel_ms.get(kind, 0.0) + ms
        kernel_count[kind] = kernel_count.get(kind, 0.0) + calls
        per_name.append((entry.key, ms, calls))
    per_name.sort(key=lambda row: -row[1])
    return StepProfile(
        step_ms=step_ms,
        kernels_per_step=sum(kernel_count.values()),
        kernel_ms=kernel_ms,
        kernel_count=kernel_count,
        top=per_name[:top],
    )

"""A stand-in for CUDA graph capture on CPU: replaying reruns the recorded step.

CUDA graphs cannot be recorded without a GPU. What replays them is the same code on any device:
the graph holders stage each batch into static buffers, plan attention over them and replay.
`ReplayByRerun` replays by running the recorded step again on the same static buffers and
writing into the same output tensor, as a graph replay does.
"""

from __future__ import annotations

import torch

from tpserve.distributed.group import TPGroup
from tpserve.engine.config import EngineConfig
from tpserve.engine.cuda_graph import StepFn
from tpserve.engine.runner import ModelRunner


class RecordedStep:
    def __init__(self, step: StepFn, output: torch.Tensor) -> None:
        self.step = step
        self.output = output

    @torch.inference_mode()
    def replay(self) -> None:
        self.output.copy_(self.step())


class ReplayByRerun:
    def __init__(self) -> None:
        self.recorded: list[int] = []  # the first dimension of each recorded step's input rows

    def capture(self, step: StepFn) -> tuple[RecordedStep, torch.Tensor]:
        output = step()
        self.recorded.append(output.shape[0])
        return RecordedStep(step, output), output


def float64_cpu_runner(model_path: str, page_size: int, context_length: int) -> ModelRunner:
    """A tp=1 CPU runner in float64 (replayed and eager steps then agree to rounding), 8 rows."""
    config = EngineConfig(
        model_path=model_path,
        device="cpu",
        dtype="float64",
        page_size=page_size,
        max_running_requests=8,
        max_total_tokens=512,
        context_length=context_length,
    )
    return ModelRunner(config, config.validate(), TPGroup(rank=0, world_size=1, device=torch.device("cpu")))

"""A stand-in for CUDA graph capture on CPU: replaying reruns the recorded step.

CUDA graphs cannot be recorded without a GPU. What replays them is the same code on any device:
the graph holders stage each batch into static buffers, plan attention over them and replay.
`ReplayByRerun` replays by running the recorded step again on the same static buffers and
writing into the same output tensor, as a graph replay does.
"""

from __future__ import annotations

import torch

from tpserve.engine.cuda_graph import StepFn


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

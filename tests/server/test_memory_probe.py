"""The start-up memory probe runs the largest step over the probe cache before the KV cache is sized.

The probe's measurement reads CUDA's allocator counters, which do not exist on CPU, so here a meter
that reports a fixed peak stands in for them; everything else (the largest prefill over the
one-page probe cache, prompt log-probabilities, the full sampling batch, then the real cache and
tables) runs as it does on a GPU. bench/check_memory.py checks the measured reserve on the GPU.
"""

from __future__ import annotations

import pytest
import torch

from tpserve.core.batch import ForwardBatch
from tpserve.distributed.group import TPGroup
from tpserve.engine import runner as runner_module
from tpserve.engine.config import EngineConfig
from tpserve.engine.runner import STEP_MEMORY_HEADROOM, ModelRunner

MEASURED_PEAK = 10 * 2**20


class FixedPeakMeter:
    def __init__(self) -> None:
        self.started = 0

    def start(self) -> None:
        self.started += 1

    def peak_bytes(self) -> int:
        assert self.started, "the peak was read before the measurement started"
        return MEASURED_PEAK


def _runner(tiny_checkpoint, max_prefill_length: int) -> ModelRunner:
    config = EngineConfig(
        model_path=str(tiny_checkpoint("llama")),
        device="cpu",
        dtype="float64",
        page_size=4,
        max_running_requests=8,
        max_total_tokens=512,
        context_length=64,
        max_prefill_length=max_prefill_length,
    )
    return ModelRunner(config, config.validate(), TPGroup(rank=0, world_size=1, device=torch.device("cpu")))


def test_probed_runner_reserves_the_measured_peak_and_serves_like_an_unprobed_one(
    tiny_checkpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    plain = _runner(tiny_checkpoint, max_prefill_length=48)
    assert plain.step_reserve == 0  # CPU: nothing is reserved by default
    meter = FixedPeakMeter()
    prefills: list[int] = []
    original_forward_eager = ModelRunner.forward_eager

    def counting_forward_eager(self: ModelRunner, plan: ForwardBatch) -> torch.Tensor:
        prefills.append(int(plan.query_lens.sum()))
        return original_forward_eager(self, plan)

    monkeypatch.setattr(runner_module, "memory_meter", lambda device: meter)
    monkeypatch.setattr(ModelRunner, "forward_eager", counting_forward_eager)
    probed = _runner(tiny_checkpoint, max_prefill_length=48)
    monkeypatch.undo()

    assert meter.started == 1 and prefills == [48]  # the largest prefill the server will run
    assert probed.step_reserve == int(MEASURED_PEAK * STEP_MEMORY_HEADROOM)
    assert probed.num_pages == plain.num_pages
    # The probe's garbage K/V and page table entries are gone: the same prompt gives the same logits.
    prompt = [3, 1, 4, 1, 5, 9, 2, 6]
    step = ForwardBatch.fresh(prompt, [len(prompt)], [len(prompt)], [[0, 1]], [True])
    torch.testing.assert_close(probed.forward(step), plain.forward(step), rtol=0, atol=0)
    decode = ForwardBatch.fresh([5], [1], [len(prompt) + 1], [[0, 1, 2]], [True])
    torch.testing.assert_close(probed.forward(decode), plain.forward(decode), rtol=0, atol=0)

"""Scheduler host time per step against the number of running requests, without a model.

N requests with 512-token prompts are prefilled, then every step decodes all of them: the table
gives the median time of `schedule()` and of `update()` per decode step, with the radix cache on
and off (the part of a step's host work the scheduler owns; sampling and the forward are not in it).

    python bench/scheduler.py --running 64,256,1024
"""

from __future__ import annotations

import argparse
import statistics
import time

from tpserve.engine.sampling import SampleResult, SamplingParams
from tpserve.engine.scheduler import Scheduler, SchedulerLimits, Sequence

PAGE_SIZE = 16
PROMPT = 512


def decode_steps(running: int, steps: int, radix: bool) -> tuple[float, float]:
    """Median ms of schedule() and of update() over `steps` decode steps of `running` requests."""
    pages = running * ((PROMPT + steps + 2) // PAGE_SIZE + 1)
    scheduler = Scheduler(
        SchedulerLimits(PAGE_SIZE, pages, running, PROMPT * running, 1 << 20, (2,), radix_cache=radix)
    )
    for i in range(running):
        prompt = [(i * 7919 + j) % 50000 for j in range(PROMPT)]  # no two share a page
        scheduler.add(Sequence(f"r{i}", prompt, PROMPT, SamplingParams(max_tokens=steps + 2, ignore_eos=True)))
    schedule_ms, update_ms = [], []
    for step in range(steps + 1):
        started = time.perf_counter()
        planned = scheduler.schedule()
        planned_at = time.perf_counter()
        assert planned is not None
        scheduler.update(planned, [SampleResult(7, None)] * len(planned.sampled))
        if step > 0:  # step 0 is the prefill of every prompt
            schedule_ms.append(1e3 * (planned_at - started))
            update_ms.append(1e3 * (time.perf_counter() - planned_at))
    assert scheduler.num_running == running and scheduler.num_preemptions == 0
    return statistics.median(schedule_ms), statistics.median(update_ms)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--running", default="64,256,1024", help="comma-separated numbers of running requests")
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    print(f"{'running':>8} {'radix':>6} {'schedule ms':>12} {'update ms':>10} {'total ms':>9}")
    for running in (int(n) for n in args.running.split(",")):
        for radix in (True, False):
            schedule_ms, update_ms = decode_steps(running, args.steps, radix)
            on = "on" if radix else "off"
            print(f"{running:>8} {on:>6} {schedule_ms:>12.3f} {update_ms:>10.3f} {schedule_ms + update_ms:>9.3f}")


if __name__ == "__main__":
    main()

"""The online workload through the real scheduler on a simulated clock: TTFT and inter-token latency
per prefill policy, without a model or a GPU.

`bench/online.py`'s closed loop (CLIENTS clients, each sending its next request when the last one
finished; every request INPUT prompt tokens and OUTPUT generated ones) is fed to `Scheduler`; each
step it plans takes the time a cost model gives it, and every sampled token is timed at the end of
its step. The model's defaults are fitted to one H200 at the Llama-3.1-8B shape (docs/performance.md,
2026-12-03): a prefill step costs 4 ms + 26.5 µs per token (an 8,192-token step ~221 ms), a decode
step 4.9 ms + 33 µs per running row (5.0 ms at batch 1, 7.0 at 64). Requests of one burst reach the
scheduler --arrival-gap-ms apart (the front end handles them one after another). The step loop is
sequential (overlap scheduling hides the host's work; it does not change the order of steps).

This is a model, not a measurement: it ranks policies by what the scheduler alone decides (which
steps run, in what order), to say which one a GPU run should measure.

    python bench/schedule_sim.py --clients 1,16,64 --streaks 1,4,1000
"""

from __future__ import annotations

import argparse
import heapq
import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from tpserve.engine.sampling import SampleResult, SamplingParams
from tpserve.engine.scheduler import ScheduledStep, Scheduler, SchedulerLimits, Sequence

PAGE_SIZE = 16


@dataclass(frozen=True)
class StepCosts:
    """Milliseconds a step takes on the GPU, by kind."""

    prefill_base_ms: float = 4.0
    prefill_token_ms: float = 0.0265
    decode_base_ms: float = 4.9
    decode_row_ms: float = 0.033

    def of(self, step: ScheduledStep) -> float:
        batch = step.batch
        if batch.is_decode_only:
            return self.decode_base_ms + self.decode_row_ms * batch.num_seqs
        return self.prefill_base_ms + self.prefill_token_ms * batch.num_tokens


@dataclass
class Request:
    sent_ms: float
    token_ms: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class Workload:
    clients: int
    requests_per_client: int
    input_len: int
    output_len: int
    arrival_gap_ms: float


def simulate(workload: Workload, streak: int, costs: StepCosts, prefill_budget: int) -> list[Request]:
    """Every request's send time and token times under `max_prefill_streak = streak`."""
    total = workload.clients * workload.requests_per_client
    pages = total * (-(-(workload.input_len + workload.output_len) // PAGE_SIZE) + 1)
    scheduler = Scheduler(
        SchedulerLimits(
            PAGE_SIZE,
            pages,
            max_running=256,
            max_prefill_length=prefill_budget,
            max_model_len=workload.input_len + workload.output_len + 1,
            eos_token_ids=(1,),
            max_prefill_streak=streak,
        )
    )
    requests: dict[str, Request] = {}
    sent_by_client = [0] * workload.clients
    arrivals: list[tuple[float, int]] = [(i * workload.arrival_gap_ms, i) for i in range(workload.clients)]
    heapq.heapify(arrivals)
    now = 0.0

    def admit_arrived() -> None:
        while arrivals and arrivals[0][0] <= now:
            sent, client = heapq.heappop(arrivals)
            number = sent_by_client[client]
            sent_by_client[client] += 1
            request_id = f"c{client}-{number}"
            # Distinct prompts: no request's prefix is cached for another.
            prompt = [2 + (client * 1_000_003 + number * 7919 + j) % 50_000 for j in range(workload.input_len)]
            params = SamplingParams(max_tokens=workload.output_len, ignore_eos=True)
            scheduler.add(Sequence(request_id, prompt, len(prompt), params))
            requests[request_id] = Request(sent)

    while arrivals or scheduler.has_work:
        admit_arrived()
        step = scheduler.schedule()
        if step is None:  # idle until the next request arrives
            now = arrivals[0][0]
            continue
        now += costs.of(step)
        for output in scheduler.update(step, [SampleResult(7, None)] * len(step.sampled)):
            if output.token_id is None:
                continue
            request = requests[output.request_id]
            request.token_ms.append(now)
            if output.finish_reason is not None:
                client = int(output.request_id[1:].split("-")[0])
                if sent_by_client[client] < workload.requests_per_client:
                    heapq.heappush(arrivals, (now, client))
    return list(requests.values())


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summary(requests: list[Request]) -> dict[str, float]:
    ttft = [r.token_ms[0] - r.sent_ms for r in requests]
    itl = [b - a for r in requests for a, b in zip(r.token_ms, r.token_ms[1:])]
    span = max(r.token_ms[-1] for r in requests) - min(r.sent_ms for r in requests)
    tokens = sum(len(r.token_ms) for r in requests)
    return {
        "out_tok_s": tokens / (span / 1e3),
        "ttft_p50": statistics.median(ttft),
        "ttft_p99": percentile(ttft, 0.99),
        "itl_p50": statistics.median(itl),
        "itl_p99": percentile(itl, 0.99),
        "itl_max": max(itl),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", default="1,16,64")
    parser.add_argument("--streaks", default="1,2,4,1000", help="max_prefill_streak values (1000: prefill first)")
    parser.add_argument("--requests-per-client", type=int, default=2)
    parser.add_argument("--input-len", type=int, default=512)
    parser.add_argument("--output-len", type=int, default=256)
    parser.add_argument("--max-prefill-length", type=int, default=8192)
    parser.add_argument("--arrival-gap-ms", type=float, default=0.5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    costs = StepCosts()
    rows = []
    print(
        f"simulated: input {args.input_len}, output {args.output_len}, {args.requests_per_client} requests per "
        f"client, prefill budget {args.max_prefill_length}; ms"
    )
    print(f"{'clients':>8}{'streak':>8}{'out tok/s':>11}{'TTFT p50':>10}{'p99':>9}{'ITL p50':>9}{'p99':>8}{'max':>8}")
    for clients in (int(c) for c in args.clients.split(",")):
        for streak in (int(s) for s in args.streaks.split(",")):
            workload = Workload(clients, args.requests_per_client, args.input_len, args.output_len, args.arrival_gap_ms)
            result = summary(simulate(workload, streak, costs, args.max_prefill_length))
            rows.append({"clients": clients, "streak": streak, **result})
            print(
                f"{clients:>8}{streak:>8}{result['out_tok_s']:>11.0f}{result['ttft_p50']:>10.1f}{result['ttft_p99']:>9.1f}"
                f"{result['itl_p50']:>9.2f}{result['itl_p99']:>8.2f}{result['itl_max']:>8.1f}"
            )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()

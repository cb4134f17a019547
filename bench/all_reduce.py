"""All-reduce latency on N local GPUs: NCCL against the one-shot symmetric-memory kernel.

For each message size (bf16), both are first checked against each other on random data, then
timed eagerly (one call, synchronised) and inside a CUDA graph (20 calls captured in one graph,
replayed; the per-call time is the replay time / 20), as the decode graphs use them. Prints a
table and writes JSON; the cut-off in server/tpserve/all_reduce.py comes from this table.

    python bench/all_reduce.py --tp 2 --json all_reduce.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist
from numerics import relative_error

from tpserve.distributed.all_reduce import OneShotAllReduce
from tpserve.distributed.group import TPGroup
from tpserve.engine.cuda_graph import CudaGraphCapture
from tpserve.testing.ranks import run_on_ranks

CALLS_PER_GRAPH = 20


def nccl(tensor: torch.Tensor) -> torch.Tensor:
    dist.all_reduce(tensor)
    return tensor


def time_eager(op: Callable[[torch.Tensor], torch.Tensor], tensor: torch.Tensor, iters: int) -> float:
    times = []
    for i in range(iters + 5):
        dist.barrier()
        torch.cuda.synchronize()
        started = time.perf_counter()
        op(tensor)
        torch.cuda.synchronize()
        if i >= 5:
            times.append((time.perf_counter() - started) * 1e6)
    return statistics.median(times)


def time_graph(op: Callable[[torch.Tensor], torch.Tensor], tensor: torch.Tensor, iters: int) -> float:
    def calls() -> torch.Tensor:
        x = tensor
        for _ in range(CALLS_PER_GRAPH):
            x = op(x)
        return x

    graph, _ = CudaGraphCapture(tensor.device).capture(calls)  # as the decode graphs are captured
    times = []
    for i in range(iters + 3):
        dist.barrier()
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        torch.cuda.synchronize()
        if i >= 3:
            times.append(start.elapsed_time(end) * 1e3 / CALLS_PER_GRAPH)
    return statistics.median(times)


def bench_rank(group: TPGroup, sizes_kib: list[int], iters: int) -> list[dict]:
    device = group.device
    one_shot = OneShotAllReduce(device, torch.bfloat16, max_bytes=max(sizes_kib) * 1024)
    rows = []
    for kib in sizes_kib:
        numel = kib * 1024 // 2
        generator = torch.Generator(device=device).manual_seed(1000 * kib + group.rank)
        data = torch.randn(numel, dtype=torch.bfloat16, device=device, generator=generator)
        expected = nccl(data.clone().float())  # float32 sum as the reference
        got_nccl, got_one_shot = nccl(data.clone()), one_shot(data.clone())
        error = {name: relative_error(got, expected) for name, got in (("nccl", got_nccl), ("one_shot", got_one_shot))}
        row = {"kib": kib, "rel_error_nccl": error["nccl"], "rel_error_one_shot": error["one_shot"]}
        for name, op in (("nccl", nccl), ("one_shot", one_shot)):
            row[f"{name}_eager_us"] = time_eager(op, data.clone(), iters)
            row[f"{name}_graph_us"] = time_graph(op, data.clone(), iters)
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tp", type=int, default=2)
    parser.add_argument("--sizes-kib", default="8,32,64,128,256,512,1024,2048,4096")
    parser.add_argument("--iters", type=int, default=50)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes_kib.split(",")]
    rows = run_on_ranks(args.tp, "cuda", bench_rank, sizes, args.iters)
    print(f"all-reduce, bf16, tp={args.tp}, {torch.cuda.get_device_name(0)} (median us per call)")
    print(
        f"{'KiB':>6}{'nccl eager':>12}{'1shot eager':>13}{'nccl graph':>12}{'1shot graph':>13}{'err nccl':>10}{'err 1shot':>11}"
    )
    for r in rows:
        print(
            f"{r['kib']:>6}{r['nccl_eager_us']:>12.1f}{r['one_shot_eager_us']:>13.1f}{r['nccl_graph_us']:>12.1f}"
            f"{r['one_shot_graph_us']:>13.1f}{r['rel_error_nccl']:>10.1e}{r['rel_error_one_shot']:>11.1e}"
        )
    bad = [r["kib"] for r in rows if not r["rel_error_one_shot"] < 1e-2]
    if bad:
        raise SystemExit(f"one-shot all-reduce wrong at {bad} KiB")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()

"""Decode step time against the HBM roofline, with dummy weights of a real model shape, at tp=N.

One step = what the engine does per decode iteration minus sampling: rank 0 broadcasts the step
plan (tp > 1), every rank builds its inputs, plans attention and runs the forward to logits, and
the step ends when rank 0's logits are ready. Modes, all on the same weights and cache:
  eager       the forward launched op by op from Python;
  graph       replayed from the decode CUDA graphs (the default engine path);
  graph-unfused  graphs of the torch reference ops instead of the fused flashinfer kernels;
  graph-nccl  (tp > 1) graphs captured with every all-reduce on NCCL (--disable-custom-all-reduce).
The roofline is the bytes a step must read on one rank (its weight shard once, plus its share of
the batch's KV cache) over the device-copy bandwidth measured in the same run. Prints a table and
writes JSON. `--profile graph:1` also splits that step (mode:batch) into kernel time by kind and
idle time, from torch.profiler on rank 0.

    python bench/decode.py --shape bench/shapes/llama-3.1-8b.json --tp 1 --json decode-tp1.json
    python bench/decode.py --tp 2 --json decode-tp2.json      # on 2 GPUs
    python bench/decode.py --batches 1 --profile graph:1,eager:1
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from pathlib import Path

import torch
from kernel_profile import profile_step
from model_dirs import SHAPES, shape_model_dir
from roofline import copy_bandwidth

from tpserve.core.batch import ForwardBatch
from tpserve.distributed.group import TPGroup
from tpserve.engine.config import EngineConfig
from tpserve.engine.cuda_graph import CudaGraphCapture, DecodeGraphs
from tpserve.engine.messages import Stop
from tpserve.engine.runner import ModelRunner
from tpserve.layers.kernels import fused_kernels, reference_ops
from tpserve.testing.ranks import run_on_ranks


def decode_batch(batch: int, context: int, page_size: int, vocab: int) -> ForwardBatch:
    pages_per_seq = -(-context // page_size)
    generator = torch.Generator().manual_seed(batch)
    return ForwardBatch.fresh(
        token_ids=torch.randint(0, vocab, (batch,), generator=generator).tolist(),
        query_lens=[1] * batch,
        context_lens=[context] * batch,
        page_tables=[list(range(i * pages_per_seq, (i + 1) * pages_per_seq)) for i in range(batch)],
        sample=[True] * batch,
    )


class Modes:
    """The step functions to time, on one runner."""

    def __init__(self, runner: ModelRunner, group: TPGroup, max_bs: int) -> None:
        self.runner = runner
        self.graphs: dict[str, DecodeGraphs] = {}
        assert runner.graphs is not None
        self.graphs["graph"] = runner.graphs
        capture = CudaGraphCapture(group.device)
        # The same step with the torch reference ops instead of the fused kernels.
        if fused_kernels(group.device, runner.dtype) is not None:
            with reference_ops(runner.model):
                self.graphs["graph-unfused"] = runner.decode_graphs(max_bs, capture)
        if group.world_size > 1 and group.small_all_reduce is not None:
            fast, group.small_all_reduce = group.small_all_reduce, None
            self.graphs["graph-nccl"] = runner.decode_graphs(max_bs, capture)
            group.small_all_reduce = fast
        self.names = ["eager", *self.graphs]

    def step(self, mode: str, plan: ForwardBatch) -> torch.Tensor:
        if mode == "eager":
            return self.runner.forward_eager(plan)
        self.runner.tables.apply(plan)  # as runner.forward does: the plan's page-table updates
        return self.graphs[mode].run(plan)


def time_steps(group: TPGroup, modes: Modes, mode: str, plan: ForwardBatch, iters: int) -> tuple[float, float]:
    """Median (step, host) ms on rank 0: the whole step, and the part before its work is launched.

    Followers are driven by the broadcast plans. The host part (broadcast, staging, attention
    planning, launching) runs while the GPU idles, since each step waits for the last's logits.
    """
    times, host = [], []
    for i in range(iters + 3):  # 3 warm-up steps
        started = time.perf_counter()
        group.broadcast_object((mode, plan))
        modes.step(mode, plan)
        launched = time.perf_counter()
        torch.cuda.synchronize()
        if i >= 3:
            times.append((time.perf_counter() - started) * 1e3)
            host.append((launched - started) * 1e3)
    return statistics.median(times), statistics.median(host)


def profile_targets(spec: str) -> list[tuple[str, int]]:
    """ "graph:1,eager:8" -> [("graph", 1), ("eager", 8)]."""
    targets = []
    for item in filter(None, spec.split(",")):
        mode, _, batch = item.partition(":")
        targets.append((mode, int(batch or 1)))
    return targets


def profile_rank0(group: TPGroup, modes: Modes, args: argparse.Namespace, rows: list[dict]) -> list[dict]:
    profiles = []
    for mode, batch in profile_targets(args.profile):
        [timed] = [r for r in rows if (r["mode"], r["batch"]) == (mode, batch)]
        plan = decode_batch(batch, args.context, args.page_size, modes.runner.model_config.vocab_size)

        def step(mode: str = mode, plan: ForwardBatch = plan) -> None:
            group.broadcast_object((mode, plan))
            modes.step(mode, plan)
            torch.cuda.synchronize()

        result = profile_step(step, timed["step_ms"])
        profiles.append(
            {"mode": mode, "batch": batch, "tp": group.world_size, "table": result.table(), **result.as_json()}
        )
    return profiles


def bench_rank(group: TPGroup, args: argparse.Namespace, model_dir: str) -> tuple[list[dict], list[dict]]:
    logging.basicConfig(level="INFO", format="%(message)s")  # the runner logs its graph memory
    batches = [int(b) for b in args.batches.split(",")]
    config = EngineConfig(
        model_path=model_dir,
        tp=group.world_size,
        device="cuda",
        dtype="bfloat16",
        load_format="dummy",
        attention_backend=args.attn,
        page_size=args.page_size,
        context_length=args.context + 8,
        max_running_requests=max(batches),
        max_total_tokens=max(batches) * (args.context + args.page_size),
        mem_fraction_static=0.85,
        cuda_graph_max_bs=max(batches),
    )
    runner = ModelRunner(config, config.validate(), group)
    for layer in runner.kv_cache.layers:
        layer.normal_()  # timing on zeros flatters kernels
    modes = Modes(runner, group, max(batches))
    if not group.is_leader:
        while True:
            message = group.broadcast_object(None)
            if isinstance(message, Stop):
                return [], []
            modes.step(*message)
    device = group.device
    bandwidth = copy_bandwidth(device)
    weight_bytes = sum(p.numel() * p.element_size() for p in {id(p): p for p in runner.model.parameters()}.values())
    per_token_kv = runner.kv_cache.shape.bytes_per_page(runner.dtype) / args.page_size
    rows = []
    for mode in modes.names:
        for batch in batches:
            plan = decode_batch(batch, args.context, args.page_size, runner.model_config.vocab_size)
            ms, host_ms = time_steps(group, modes, mode, plan, args.iters)
            kv_bytes = batch * args.context * per_token_kv
            rows.append(
                {
                    "tp": group.world_size,
                    "mode": mode,
                    "attn": args.attn,
                    "batch": batch,
                    "context": args.context,
                    "step_ms": ms,
                    "host_ms": host_ms,
                    "roofline_ms": 1e3 * (weight_bytes + kv_bytes) / bandwidth,
                    "weights_only_roofline_ms": 1e3 * weight_bytes / bandwidth,
                    "weight_gb_per_rank": weight_bytes / 1e9,
                    "copy_tb_s": bandwidth / 1e12,
                    "custom_all_reduce": group.small_all_reduce is not None and mode != "graph-nccl",
                    "device": torch.cuda.get_device_name(device),
                }
            )
    profiles = profile_rank0(group, modes, args, rows)
    group.broadcast_object(Stop())
    return rows, profiles


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", type=Path, default=SHAPES / "llama-3.1-8b.json")
    parser.add_argument("--tp", type=int, default=1)
    parser.add_argument("--attn", default="fi")
    parser.add_argument("--batches", default="1,8,64,256")
    parser.add_argument("--context", type=int, default=1024, help="tokens already in each sequence's KV cache")
    parser.add_argument("--page-size", type=int, default=16)
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--profile", default="", help="mode:batch pairs to split into kernel kinds, e.g. graph:1")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    for mode, batch in profile_targets(args.profile):
        if str(batch) not in args.batches.split(","):
            parser.error(f"--profile {mode}:{batch}: batch {batch} is not in --batches {args.batches}")
    with shape_model_dir(args.shape) as model_dir:
        rows, profiles = run_on_ranks(args.tp, "cuda", bench_rank, args, str(model_dir))
    first = rows[0]
    print(
        f"device: {first['device']}; tp={args.tp}; copy bandwidth {first['copy_tb_s']:.2f} TB/s; "
        f"weights {first['weight_gb_per_rank']:.2f} GB per rank; context {args.context}"
    )
    print(f"{'mode':<14}{'batch':>6}{'step ms':>10}{'host ms':>9}{'roofline ms':>13}{'x roofline':>12}")
    for r in rows:
        print(
            f"{r['mode']:<14}{r['batch']:>6}{r['step_ms']:>10.2f}{r['host_ms']:>9.2f}{r['roofline_ms']:>13.2f}{r['step_ms'] / r['roofline_ms']:>12.2f}"
        )
    for p in profiles:
        print(f"\nprofile: tp={p['tp']} {p['mode']} batch {p['batch']}, per step (rank 0)\n{p['table']}")
    if args.json:
        args.json.write_text(json.dumps({"steps": rows, "profiles": profiles} if profiles else rows, indent=2))


if __name__ == "__main__":
    main()

"""Decode step time against the HBM roofline, at tp=1, with dummy weights of a real model shape.

One step = what the engine does per decode iteration on rank 0 minus sampling: build the batch
tensors, plan attention, run the forward to logits. The roofline is the bytes a step must read
(all weights once, plus the batch's KV cache) over the device-copy bandwidth measured in the same
run. Prints a table and writes JSON.

    python bench/decode.py --shape bench/shapes/llama-3.1-8b.json --attn fi torch --json out.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
from pathlib import Path

import torch

from tpserve.batch import ForwardBatch
from tpserve.config import EngineConfig
from tpserve.distributed import TPGroup
from tpserve.runner import ModelRunner


def copy_bandwidth(device: torch.device, gib: float = 2.0) -> float:
    """Bytes per second of a device-to-device copy, counting bytes read plus bytes written."""
    src = torch.randn(int(gib * 2**30 / 2), dtype=torch.bfloat16, device=device)
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    times = []
    for _ in range(10):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        dst.copy_(src)
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return 2 * src.numel() * src.element_size() / statistics.median(times)


def decode_batch(batch: int, context: int, page_size: int, vocab: int) -> ForwardBatch:
    pages_per_seq = -(-context // page_size)
    generator = torch.Generator().manual_seed(batch)
    return ForwardBatch(
        token_ids=torch.randint(0, vocab, (batch,), generator=generator).tolist(),
        query_lens=[1] * batch,
        context_lens=[context] * batch,
        page_tables=[list(range(i * pages_per_seq, (i + 1) * pages_per_seq)) for i in range(batch)],
        sample=[True] * batch,
    )


def time_steps(runner: ModelRunner, plan: ForwardBatch, iters: int) -> float:
    for _ in range(3):
        runner.forward(plan)
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        runner.forward(plan)
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", type=Path, default=Path(__file__).parent / "shapes" / "llama-3.1-8b.json")
    parser.add_argument("--attn", nargs="+", default=["fi", "torch"])
    parser.add_argument("--batches", default="1,8,64,256")
    parser.add_argument("--context", type=int, default=1024, help="tokens already in each sequence's KV cache")
    parser.add_argument("--page-size", type=int, default=16)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    device = torch.device("cuda", 0)
    bandwidth = copy_bandwidth(device)
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        shutil.copy(args.shape, Path(scratch) / "config.json")
        for attn in args.attn:
            config = EngineConfig(
                model_path=scratch, device="cuda", dtype="bfloat16", load_format="dummy", attention_backend=attn,
                page_size=args.page_size, context_length=args.context + 8, max_running_requests=max(batches),
                max_total_tokens=max(batches) * (args.context + args.page_size), mem_fraction_static=0.85,
            )
            model_config = config.validate()
            runner = ModelRunner(config, model_config, TPGroup(rank=0, world_size=1, device=device))
            weight_bytes = sum(p.numel() * p.element_size() for p in {id(p): p for p in runner.model.parameters()}.values())
            for layer in runner.kv_cache.layers:
                layer.normal_()  # timing on zeros flatters kernels
            per_token_kv = runner.kv_cache.shape.bytes_per_page(runner.dtype) / args.page_size
            for batch in batches:
                ms = time_steps(runner, decode_batch(batch, args.context, args.page_size, model_config.vocab_size), args.iters)
                kv_bytes = batch * args.context * per_token_kv
                rows.append({
                    "attn": attn, "batch": batch, "context": args.context, "step_ms": ms,
                    "roofline_ms": 1e3 * (weight_bytes + kv_bytes) / bandwidth,
                    "weights_only_roofline_ms": 1e3 * weight_bytes / bandwidth,
                    "weight_gb": weight_bytes / 1e9, "copy_tb_s": bandwidth / 1e12,
                    "device": torch.cuda.get_device_name(device),
                })
            del runner
            torch.cuda.empty_cache()
    print(f"device: {rows[0]['device']}; copy bandwidth {bandwidth / 1e12:.2f} TB/s; weights {rows[0]['weight_gb']:.2f} GB; context {args.context}")
    print(f"{'attn':<8}{'batch':>6}{'step ms':>10}{'roofline ms':>13}{'x roofline':>12}")
    for r in rows:
        print(f"{r['attn']:<8}{r['batch']:>6}{r['step_ms']:>10.2f}{r['roofline_ms']:>13.2f}{r['step_ms'] / r['roofline_ms']:>12.2f}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()

"""Prefill speed and model FLOPs utilisation (MFU): one long prompt's prefill, as the engine runs it.

One step = one prompt of --tokens tokens prefilled in one chunk over a fresh cache (the engine's
eager prefill path: request tables, attention plan, forward to the last position's logits), median
of --iters after 2 warm-ups, at tp=1. The FLOPs counted are the model's: 2 per weight per token
for every linear layer (the LM head only for the one position whose logits a prefill returns), and
causal attention's 2·T²·heads·head_dim per layer (QKᵀ and PV over the lower triangle). MFU is that
over the time, over the device's dense bf16 tensor-core peak (989 TFLOPS for an H100/H200 SXM;
`--peak-tflops` for any other device). `--profile` splits the step into kernel time by kind.
`--graph` (CUDA only) also times the same step replayed from its prefill CUDA graph
(`--cuda-graph-max-prefill-tokens`), alternating with the eager step, and compares their logits.

    python bench/prefill.py --shape bench/shapes/llama-3.1-8b.json --tokens 8192
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from kernel_profile import profile_step
from model_dirs import SHAPES, shape_model_dir

from tpserve.core.batch import ForwardBatch
from tpserve.distributed.group import TPGroup
from tpserve.engine.config import EngineConfig
from tpserve.engine.runner import ModelRunner
from tpserve.models.config import ModelConfig

HOPPER_BF16_DENSE_TFLOPS = 989.0


def model_flops(config: ModelConfig, tokens: int) -> float:
    """Model FLOPs of one prefill of `tokens` tokens that returns one position's logits."""
    hidden, head_dim = config.hidden_size, config.head_dim
    q_out, kv_out = config.num_heads * head_dim, config.num_kv_heads * head_dim
    per_layer_weights = hidden * (q_out + 2 * kv_out) + q_out * hidden + 3 * hidden * config.intermediate_size
    linear = 2 * per_layer_weights * config.num_layers * tokens + 2 * hidden * config.vocab_size
    attention = 2 * tokens * tokens * config.num_heads * head_dim * config.num_layers
    return float(linear + attention)


def peak_tflops(device: torch.device, given: float | None) -> float | None:
    if given is not None:
        return given
    if device.type == "cuda" and any(n in torch.cuda.get_device_name(device) for n in ("H100", "H200")):
        return HOPPER_BF16_DENSE_TFLOPS
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", type=Path, default=SHAPES / "llama-3.1-8b.json")
    parser.add_argument("--tokens", type=int, default=8192)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--attn", default="fi")
    parser.add_argument("--page-size", type=int, default=16)
    parser.add_argument("--peak-tflops", type=float, help="the device's dense tensor-core peak for --dtype")
    parser.add_argument("--profile", action="store_true", help="also split the step into kernel time by kind")
    parser.add_argument("--graph", action="store_true", help="also time the step replayed from a prefill CUDA graph")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.graph and device.type != "cuda":
        parser.error("--graph needs --device cuda")
    with shape_model_dir(args.shape) as model_dir:
        config = EngineConfig(
            model_path=str(model_dir),
            device=args.device,
            dtype=args.dtype,
            load_format="dummy",
            attention_backend=args.attn,
            page_size=args.page_size,
            context_length=args.tokens + args.page_size,
            max_prefill_length=args.tokens,
            max_running_requests=1,
            max_total_tokens=args.tokens + args.page_size,
            disable_cuda_graph=not args.graph,
            cuda_graph_max_bs=1,
            cuda_graph_max_prefill_tokens=args.tokens if args.graph else 0,
        )
        model_config = config.validate()
        runner = ModelRunner(config, model_config, TPGroup(rank=0, world_size=1, device=device))
    pages = list(range(-(-args.tokens // args.page_size)))
    prompt = torch.randint(0, model_config.vocab_size, (args.tokens,), generator=torch.Generator().manual_seed(0))
    plan = ForwardBatch.fresh(prompt.tolist(), [args.tokens], [args.tokens], [pages], [True])

    def step() -> None:
        runner.forward_eager(plan)
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def graph_step() -> None:
        runner.forward(plan)
        torch.cuda.synchronize(device)

    if args.graph:
        assert runner.prefill_graphs is not None and runner.prefill_graphs.can_run(plan), "no prefill graph fits"
    times: list[float] = []
    graph_times: list[float] = []
    for i in range(args.iters + 2):  # alternating, so both see the same clocks and caches
        for run, kept in [(step, times)] + ([(graph_step, graph_times)] if args.graph else []):
            started = time.perf_counter()
            run()
            if i >= 2:
                kept.append((time.perf_counter() - started) * 1e3)
    ms = statistics.median(times)
    flops = model_flops(model_config, args.tokens)
    peak = peak_tflops(device, args.peak_tflops)
    achieved = flops / (ms / 1e3) / 1e12
    result = {
        "shape": args.shape.stem,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "dtype": args.dtype,
        "tokens": args.tokens,
        "step_ms": ms,
        "prefill_tok_s": args.tokens / (ms / 1e3),
        "model_tflop": flops / 1e12,
        "achieved_tflops": achieved,
        "peak_tflops": peak,
        "mfu": achieved / peak if peak else None,
    }
    mfu = f"{100 * result['mfu']:.1f}%" if peak else "n/a (no --peak-tflops)"
    print(f"device: {result['device']}; shape {result['shape']}; {args.dtype}; one prompt of {args.tokens} tokens")
    print(f"{'step ms':>10}{'tok/s':>12}{'TFLOP':>9}{'TFLOPS':>9}{'MFU':>8}")
    print(f"{ms:>10.2f}{result['prefill_tok_s']:>12.0f}{flops / 1e12:>9.2f}{achieved:>9.1f}  {mfu}")
    if args.graph:
        graph_ms = statistics.median(graph_times)
        eager_logits = runner.forward_eager(plan).float()
        graph_logits = runner.forward(plan).float()
        error = float((graph_logits - eager_logits).norm() / eager_logits.norm())
        result |= {"graph_step_ms": graph_ms, "graph_over_eager": graph_ms / ms, "graph_rel_error": error}
        print(
            f"\nfrom its prefill CUDA graph: {graph_ms:.2f} ms ({graph_ms / ms:.3f}x the eager step); "
            f"logits' relative error against eager {error:.2e}"
        )
    if args.profile:
        profiled = profile_step(step, ms)
        result["profile"] = profiled.as_json()
        print(f"\nprofile, per step\n{profiled.table()}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

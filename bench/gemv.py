"""Batch-1 projections: which torch call reads a weight fastest (GPU).

A batch-1 decode step is a chain of matrix-vector products; cuBLAS picks a split-K GEMM plus a
reduction kernel for some of them (down and O projections at the Llama-3.1-8B shape). This times, for
each projection of a shape at tp=1, `F.linear(x, W)` (what the model runs), `torch.mv(W, x)` and
`W @ x.T` on one token, each as 20 calls captured in one CUDA graph (as the decode graph runs them),
and prints µs per call and the bandwidth it reaches reading W. Every form is checked against
`F.linear`'s result.

    python bench/gemv.py --shape bench/shapes/llama-3.1-8b.json --json gemv.json
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

CALLS_PER_GRAPH = 20
REPLAYS = 30


def projections(config: dict) -> dict[str, tuple[int, int]]:
    """(output features, input features) of each weight a decode step reads, at tp=1."""
    hidden = config["hidden_size"]
    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or hidden // heads
    kv_heads = config.get("num_key_value_heads", heads)
    inter = config["intermediate_size"]
    return {
        "qkv": ((heads + 2 * kv_heads) * head_dim, hidden),
        "o": (hidden, heads * head_dim),
        "gate_up": (2 * inter, hidden),
        "down": (hidden, inter),
        "lm_head": (config["vocab_size"], hidden),
    }


def graph_time_us(fn: Callable[[], torch.Tensor]) -> float:
    """Median µs per call of `fn`, 20 calls to a graph."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(CALLS_PER_GRAPH):
            fn()
    graph.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(REPLAYS):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / CALLS_PER_GRAPH)
    return sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", type=Path, default=Path(__file__).parent / "shapes" / "llama-3.1-8b.json")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    config = json.loads(args.shape.read_text())
    torch.manual_seed(0)
    rows = []
    print(f"{'weight':>8}{'N x K':>16}{'linear us':>11}{'mv us':>9}{'W@x.T us':>10}{'linear TB/s':>13}{'mv TB/s':>9}")
    for name, (n, k) in projections(config).items():
        weight = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02
        x = torch.randn(1, k, device="cuda", dtype=torch.bfloat16)
        reference = F.linear(x, weight)
        forms: dict[str, Callable[[], torch.Tensor]] = {
            "linear": lambda w=weight, v=x: F.linear(v, w),
            "mv": lambda w=weight, v=x: torch.mv(w, v[0]),
            "w_xt": lambda w=weight, v=x: w @ v.T,
        }
        row: dict = {"weight": name, "n": n, "k": k}
        for form, fn in forms.items():
            error = (fn().reshape(1, n).float() - reference.float()).abs().max().item()
            scale = reference.float().abs().max().item()
            if error > 2e-2 * scale:
                raise SystemExit(f"{name}: {form} differs from F.linear by {error:.3g} (scale {scale:.3g})")
            row[f"{form}_us"] = graph_time_us(fn)
        bytes_read = n * k * 2
        row["linear_tb_s"] = bytes_read / row["linear_us"] / 1e6
        row["mv_tb_s"] = bytes_read / row["mv_us"] / 1e6
        rows.append(row)
        print(
            f"{name:>8}{f'{n} x {k}':>16}{row['linear_us']:>11.1f}{row['mv_us']:>9.1f}{row['w_xt_us']:>10.1f}"
            f"{row['linear_tb_s']:>13.2f}{row['mv_tb_s']:>9.2f}"
        )
        del weight
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()

"""Decode-step projections at batch 1-4: cuBLAS against tpserve's skinny Triton kernel (GPU).

A batch-1 decode step is a chain of matrix-vector products; cuBLAS reads the large weights at
~4.1 TB/s but the small QKV and O ones at ~3.2 TB/s, with a split-K reduction kernel for some
(down and O at the Llama-3.1-8B shape). This times, for each projection of a shape at tp=1 and each
row count, `F.linear(x, W)` (cuBLAS), the skinny kernel autotuned (what the model runs with TPSERVE_SKINNY_GEMM=1;
`auto` times the layers' own weights at start-up instead)
and the kernel at every one of its tuning configurations, each as 20 calls captured in one CUDA
graph (as the decode graph runs them), and prints µs per call and the bandwidth reading W. Every
result is checked against F.linear's.

    python bench/gemv.py --shape bench/shapes/llama-3.1-8b.json --rows 1,4 --json gemv.json
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from tpserve.layers import skinny_gemm
from tpserve.layers.skinny_choice import cuda_graph_timer

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
    """Median µs per call of `fn`, 20 calls to a graph (the engine's start-up timer, on one weight)."""
    return cuda_graph_timer([fn] * CALLS_PER_GRAPH, replays=REPLAYS)


def check(name: str, got: torch.Tensor, reference: torch.Tensor) -> None:
    error = (got.float() - reference.float()).abs().max().item()
    scale = reference.float().abs().max().item()
    if error > 2e-2 * scale:
        raise SystemExit(f"{name} differs from F.linear by {error:.3g} (scale {scale:.3g})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", type=Path, default=Path(__file__).parent / "shapes" / "llama-3.1-8b.json")
    parser.add_argument("--rows", default="1,4", help="rows of x (decode batch sizes), comma-separated")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    config = json.loads(args.shape.read_text())
    torch.manual_seed(0)
    results = []
    print(
        f"{'weight':>8}{'rows':>5}{'N x K':>16}{'cuBLAS us':>11}{'skinny us':>11}{'best config':>22}{'us':>7}"
        f"{'cuBLAS TB/s':>13}{'skinny TB/s':>13}"
    )
    for name, (n, k) in projections(config).items():
        weight = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02
        for rows in (int(r) for r in args.rows.split(",")):
            x = torch.randn(rows, k, device="cuda", dtype=torch.bfloat16)
            reference = F.linear(x, weight)
            check(f"{name} skinny", skinny_gemm.skinny_linear(x, weight), reference)
            row: dict = {"weight": name, "rows": rows, "n": n, "k": k}
            row["linear_us"] = graph_time_us(lambda w=weight, v=x: F.linear(v, w))
            row["skinny_us"] = graph_time_us(lambda w=weight, v=x: skinny_gemm.skinny_linear(v, w))
            configs = {}
            for config in skinny_gemm.TUNING_CONFIGS:
                label = f"{config.block_n}x{config.block_k} w{config.num_warps} s{config.num_stages}"
                fn = lambda w=weight, v=x, c=config: skinny_gemm.skinny_linear(v, w, config=c)  # noqa: E731
                check(f"{name} {label}", fn(), reference)
                configs[label] = graph_time_us(fn)
            row["configs_us"] = configs
            best = min(configs, key=configs.__getitem__)
            bytes_read = n * k * 2
            row["linear_tb_s"] = bytes_read / row["linear_us"] / 1e6
            row["skinny_tb_s"] = bytes_read / row["skinny_us"] / 1e6
            results.append(row)
            print(
                f"{name:>8}{rows:>5}{f'{n} x {k}':>16}{row['linear_us']:>11.1f}{row['skinny_us']:>11.1f}{best:>22}"
                f"{configs[best]:>7.1f}{row['linear_tb_s']:>13.2f}{row['skinny_tb_s']:>13.2f}"
            )
        del weight
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

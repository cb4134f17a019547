"""GPU check: decode and prefill steps replayed from CUDA graphs equal eager steps, at tp=N.

Random prompts are prefilled eagerly into a real-size paged cache (random page tables); then, for
decode batches of several sizes (most of them padded up to a captured size), the graph path's
logits and the eager path's logits are compared by relative norm error (bf16: < 1e-2), and every
logit must be finite. At tp > 1 the graphs carry the all-reduces (one-shot for small messages
unless --disable-custom-all-reduce). Then single-sequence prefill chunks (fresh prompts and
chunks after a cached prefix, most of them padded up to a captured token bucket) replayed from the
prefill graphs (`--cuda-graph-max-prefill-tokens`) against the eager prefill of the same chunk.
Exits non-zero on any mismatch.

    python bench/check_cuda_graph.py --shape bench/shapes/qwen3-0.6b.json --tp 2
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

import torch
from model_dirs import SHAPES, shape_model_dir
from numerics import relative_error

from tpserve.core.batch import ForwardBatch
from tpserve.distributed.group import TPGroup
from tpserve.engine.config import EngineConfig
from tpserve.engine.runner import ModelRunner
from tpserve.testing.ranks import run_on_ranks

MAX_BS = 64
BATCHES = (1, 3, 8, 13, 37, 64)
PREFILL_MAX_TOKENS = 512
PREFILL_CHUNKS = ((0, 5), (0, 16), (0, 100), (0, 512), (300, 37), (650, 200))  # (cached prefix, new tokens)


def check_rank(group: TPGroup, model_dir: str, custom_all_reduce: bool, seed: int) -> list[dict]:
    config = EngineConfig(
        model_path=model_dir,
        tp=group.world_size,
        device="cuda",
        dtype="bfloat16",
        load_format="dummy",
        attention_backend="fi",
        page_size=16,
        context_length=1024,
        max_running_requests=MAX_BS,
        max_total_tokens=MAX_BS * 1024,
        mem_fraction_static=0.8,
        cuda_graph_max_bs=MAX_BS,
        disable_custom_all_reduce=not custom_all_reduce,
        cuda_graph_max_prefill_tokens=PREFILL_MAX_TOKENS,
    )
    runner = ModelRunner(config, config.validate(), group)
    assert runner.graphs is not None and runner.prefill_graphs is not None, "CUDA graphs were not captured"
    rng = random.Random(seed)  # same seed on every rank: every rank runs the same plans
    free_pages = list(range(runner.num_pages))
    rng.shuffle(free_pages)
    vocab = runner.model_config.vocab_size
    rows = []
    for batch_size in BATCHES:
        contexts, tables = [], []
        for _ in range(batch_size):
            length = rng.randint(1, 700)
            table = [free_pages.pop() for _ in range(-(-(length + 1) // 16))]
            runner.forward(
                ForwardBatch.fresh([rng.randrange(vocab) for _ in range(length)], [length], [length], [table], [True])
            )
            contexts.append(length + 1)
            tables.append(table)
        decode = ForwardBatch.fresh(
            [rng.randrange(vocab) for _ in range(batch_size)], [1] * batch_size, contexts, tables, [True] * batch_size
        )
        replayed = runner.forward(decode).float().clone()  # the graph path: decode-only and fits
        eager = runner.forward_eager(decode).float()
        error = relative_error(replayed, eager)
        rows.append(
            {"step": f"decode, batch {batch_size}", "rel_error": error, "finite": bool(torch.isfinite(replayed).all())}
        )
        for table in tables:
            free_pages.extend(table)
    for cached, new in PREFILL_CHUNKS:
        table = [free_pages.pop() for _ in range(-(-(cached + new) // 16))]
        prompt = [rng.randrange(vocab) for _ in range(cached + new)]
        if cached:
            runner.forward(ForwardBatch.fresh(prompt[:cached], [cached], [cached], [table], [False]))
        chunk = ForwardBatch.fresh(prompt[cached:], [new], [cached + new], [table], [True])
        assert runner.prefill_graphs.can_run(chunk)
        replayed = runner.forward(chunk).float().clone()  # the prefill graph path
        eager = runner.forward_eager(chunk).float()
        rows.append(
            {
                "step": f"prefill, {new} after {cached}",
                "rel_error": relative_error(replayed, eager),
                "finite": bool(torch.isfinite(replayed).all()),
            }
        )
        free_pages.extend(table)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", type=Path, default=SHAPES / "qwen3-0.6b.json")
    parser.add_argument("--tp", type=int, default=1)
    parser.add_argument("--disable-custom-all-reduce", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with shape_model_dir(args.shape) as model_dir:
        rows = run_on_ranks(args.tp, "cuda", check_rank, str(model_dir), not args.disable_custom_all_reduce, args.seed)
    print(
        f"CUDA graph vs eager steps, {args.shape.name}, tp={args.tp}, custom all-reduce "
        f"{'off' if args.disable_custom_all_reduce else 'on'}"
    )
    print(f"{'step':>24}{'rel error':>12}{'finite':>8}")
    for r in rows:
        print(f"{r['step']:>24}{r['rel_error']:>12.2e}{r['finite']!s:>8}")
    bad = [r["step"] for r in rows if not (r["rel_error"] < 1e-2 and r["finite"])]
    if bad:
        raise SystemExit(f"FAIL: graph steps differ from eager: {bad}")
    print("OK")


if __name__ == "__main__":
    main()

"""GPU check: the flashinfer backend equals the torch reference backend on random inputs.

Random paged KV contents, random page tables (pages scattered, not contiguous), mixed batches of
prefill chunks with cached context and decode tokens, GQA shapes; compares per layer outputs and
the KV entries written. Exits non-zero on a mismatch.

    python bench/check_attention.py
"""

from __future__ import annotations

import random
import sys

import torch
from numerics import relative_error

from tpserve.attention import AttentionLayerShape, create_backend
from tpserve.core.batch import ForwardBatch
from tpserve.kvcache.paged_cache import KVCacheShape, PagedKVCache
from tpserve.kvcache.request_tables import RequestTables

TOLERANCE = 2e-2  # relative norm error for bf16 operands


def random_batch(rng: random.Random, page_size: int, num_pages: int, decode_only: bool) -> ForwardBatch:
    free = list(range(num_pages))
    rng.shuffle(free)
    query_lens, context_lens, tables = [], [], []
    for _ in range(rng.randint(1, 12)):
        q = 1 if decode_only or rng.random() < 0.5 else rng.randint(2, 300)
        cached = rng.randint(0, 700)
        ctx = cached + q
        n = -(-ctx // page_size)
        tables.append([free.pop() for _ in range(n)])
        query_lens.append(q)
        context_lens.append(ctx)
    return ForwardBatch.fresh([0] * sum(query_lens), query_lens, context_lens, tables, [True] * len(query_lens))


def check(shape: AttentionLayerShape, page_size: int, decode_only: bool, seed: int) -> float:
    rng = random.Random(seed)
    torch.manual_seed(seed)
    kv_shape = KVCacheShape(
        num_layers=1,
        num_pages=12 * 1000 // page_size + 64,
        page_size=page_size,
        num_kv_heads=shape.num_kv_heads,
        head_dim=shape.head_dim,
    )
    caches = [PagedKVCache(kv_shape, torch.bfloat16, torch.device("cuda")) for _ in range(2)]
    caches[0].layers[0].normal_()
    caches[1].layers[0].copy_(caches[0].layers[0])
    reference = create_backend("torch", caches[0], shape)
    candidate = create_backend("fi", caches[1], shape)
    batch = random_batch(rng, page_size, kv_shape.num_pages, decode_only)
    tokens = batch.num_tokens
    q = torch.randn(tokens, shape.num_heads, shape.head_dim, dtype=torch.bfloat16, device="cuda")
    k = torch.randn(tokens, shape.num_kv_heads, shape.head_dim, dtype=torch.bfloat16, device="cuda")
    v = torch.randn_like(k)
    outputs = []
    for backend, cache in ((reference, caches[0]), (candidate, caches[1])):
        tables = RequestTables(batch.num_seqs, -(-1000 // page_size) + 1, cache.padding_page, cache.layers[0].device)
        tables.apply(batch)
        backend.plan(tables.step_inputs(batch, cache))
        outputs.append(backend.forward(0, q, k, v).float())
    if not torch.equal(caches[0].layers[0], caches[1].layers[0]):
        raise SystemExit("KV cache writes differ between backends")
    ref, out = outputs
    if not torch.isfinite(out).all():
        raise SystemExit("non-finite output")
    return relative_error(out, ref)


def main() -> None:
    shapes = {
        "llama-8b tp1": AttentionLayerShape(32, 8, 128, 128**-0.5),
        "llama-8b tp2": AttentionLayerShape(16, 4, 128, 128**-0.5),
        "qwen3-0.6b": AttentionLayerShape(16, 8, 128, 128**-0.5),
        "mha 64": AttentionLayerShape(8, 8, 64, 64**-0.5),
    }
    worst = 0.0
    print(f"{'shape':<16}{'page':>6}{'batch':>10}{'rel err':>12}")
    for name, shape in shapes.items():
        for page_size in (16, 1):
            for decode_only in (True, False):
                error = max(check(shape, page_size, decode_only, seed) for seed in range(3))
                worst = max(worst, error)
                print(f"{name:<16}{page_size:>6}{'decode' if decode_only else 'mixed':>10}{error:>12.2e}")
    print(f"worst relative error {worst:.2e} (tolerance {TOLERANCE})")
    sys.exit(0 if worst < TOLERANCE else 1)


if __name__ == "__main__":
    main()

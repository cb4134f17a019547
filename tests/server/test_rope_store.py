"""The fused rotary + K/V store kernel, run by Triton's interpreter on CPU, against the model's own
rotary (torch reference) followed by the cache's indexed store. The GPU check runs it compiled
inside the whole model: bench/check_kernels.py."""

from __future__ import annotations

import pytest

from .triton_interpreter import run_interpreted

# (tokens, query heads, KV heads, head dim)
CASES = [(1, 4, 2, 128), (5, 8, 1, 64), (3, 2, 2, 16), (7, 6, 3, 96)]

# Triton reads TRITON_INTERPRET when it is first imported, so the interpreted kernel runs in a
# process of its own; it prints, per case, how far each output is from the reference.
CHECK = """
import json, sys
import torch
from tpserve.attention.rope_store import rope_and_store
from tpserve.layers.rotary import _rotate

results = []
for tokens, heads, kv_heads, dim in json.loads(sys.argv[1]):
    g = torch.Generator().manual_seed(tokens * 100 + heads)
    qkv = torch.randn(tokens, (heads + 2 * kv_heads) * dim, generator=g).to(torch.bfloat16)
    q, k, v = qkv.split([heads * dim, kv_heads * dim, kv_heads * dim], dim=-1)
    q, k, v = (t.view(tokens, -1, dim) for t in (q, k, v))
    positions = torch.randint(0, 50, (tokens,), generator=g)
    freqs = torch.rand(50, dim // 2, generator=g) * 40
    cos_sin = torch.cat((freqs.cos(), freqs.sin()), dim=-1)
    rows = torch.randn(4 * tokens + 3, kv_heads, dim, generator=g).to(torch.bfloat16)
    slots = torch.randperm(rows.shape[0], generator=g)[: 2 * tokens].view(tokens, 2)
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = emb.cos()[positions].unsqueeze(1), emb.sin()[positions].unsqueeze(1)
    want_q, want_k = _rotate(q.float(), cos, sin), _rotate(k.float(), cos, sin)
    want_rows = rows.clone()
    want_rows[slots[:, 0]], want_rows[slots[:, 1]] = want_k.to(torch.bfloat16), v
    k_before, v_before = k.clone(), v.clone()
    rope_and_store(q, k, v, positions, cos_sin, rows, slots)

    def excess(got, want):  # float32 math, one rounding: within one bf16 step (the interpreter truncates)
        return ((got.float() - want.float()).abs() - want.float().abs() * 2**-7 - 1e-2).max().item()

    others = torch.ones(rows.shape[0], dtype=torch.bool)
    others[slots.flatten()] = False
    results.append({
        "q": excess(q, want_q),
        "k_row": excess(rows[slots[:, 0]], want_k),
        "v_row_exact": torch.equal(rows[slots[:, 1]], v),
        "other_rows_kept": torch.equal(rows[others], want_rows[others]),
        "k_v_inputs_kept": torch.equal(k, k_before) and torch.equal(v, v_before),
    })
print(json.dumps(results))
"""


def test_fused_rotary_and_store_equals_rotary_then_the_indexed_store() -> None:
    for case, result in zip(CASES, run_interpreted(CHECK, CASES), strict=True):
        assert result["q"] <= 0 and result["k_row"] <= 0, (case, result)
        assert result["v_row_exact"] and result["other_rows_kept"] and result["k_v_inputs_kept"], (case, result)


def test_heads_that_are_not_dense_are_refused() -> None:
    import torch

    from tpserve.attention.rope_store import rope_and_store

    q = torch.zeros(2, 4, 8)[:, :, ::2]  # every other element: not a dense head
    k = v = torch.zeros(2, 1, 4)
    with pytest.raises(ValueError, match="q: heads must be dense"):
        rope_and_store(
            q,
            k,
            v,
            torch.zeros(2, dtype=torch.int64),
            torch.zeros(4, 4),
            torch.zeros(3, 1, 4),
            torch.zeros(2, 2, dtype=torch.int64),
        )

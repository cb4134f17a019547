"""The paged KV cache stores each token's k and v where its slot says, however they are laid out."""

from __future__ import annotations

import torch

from tpserve.kvcache.paged_cache import KVCacheShape, PagedKVCache

SHAPE = KVCacheShape(num_layers=2, num_pages=6, page_size=4, num_kv_heads=2, head_dim=8)


def fused_qkv_slices(tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """k and v as the model makes them: views into one [tokens, q | k | v] projection output."""
    kv_rows = SHAPE.num_kv_heads * SHAPE.head_dim
    qkv = torch.randn(tokens, 3 * kv_rows + 2 * kv_rows)
    _, k, v = qkv.split([3 * kv_rows, kv_rows, kv_rows], dim=-1)
    return k.view(tokens, SHAPE.num_kv_heads, SHAPE.head_dim), v.view(tokens, SHAPE.num_kv_heads, SHAPE.head_dim)


def test_each_token_lands_at_its_slot_from_fused_qkv_slices() -> None:
    cache = PagedKVCache(SHAPE, torch.float32, torch.device("cpu"))
    k, v = fused_qkv_slices(5)
    pages, offsets = torch.tensor([3, 3, 0, 5, SHAPE.num_pages]), torch.tensor([1, 2, 3, 0, 0])
    cache.write(1, cache.slots(pages, offsets), k, v)
    for token, (page, offset) in enumerate(zip(pages.tolist(), offsets.tolist())):
        assert torch.equal(cache.layers[1][page, 0, offset], k[token])
        assert torch.equal(cache.layers[1][page, 1, offset], v[token])
    written = torch.zeros(SHAPE.num_pages + 1, SHAPE.page_size, dtype=torch.bool)
    written[pages, offsets] = True
    assert not cache.layers[1].transpose(1, 2)[~written].any(), "a slot nobody wrote to changed"
    assert not cache.layers[0].any(), "another layer changed"


def test_fused_slices_and_separate_tensors_store_the_same_cache() -> None:
    fused, separate = (PagedKVCache(SHAPE, torch.float32, torch.device("cpu")) for _ in range(2))
    k, v = fused_qkv_slices(7)
    flat = torch.randperm(SHAPE.num_pages * SHAPE.page_size)[:7]
    where = fused.slots(flat // SHAPE.page_size, flat % SHAPE.page_size)
    fused.write(0, where, k, v)
    separate.write(0, where, k.clone(), v.clone())  # two unrelated tensors: two writes
    assert torch.equal(fused.layers[0], separate.layers[0])
    # v before k in memory, or k and v of different layouts, must not be mistaken for a pair.
    swapped = PagedKVCache(SHAPE, torch.float32, torch.device("cpu"))
    swapped.write(0, where, v, k)
    assert torch.equal(swapped.layers[0][:, 0], separate.layers[0][:, 1])
    assert torch.equal(swapped.layers[0][:, 1], separate.layers[0][:, 0])

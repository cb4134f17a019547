"""Memory-bandwidth floors: the device-copy bandwidth, and the bytes a workload must read."""

from __future__ import annotations

import statistics

import torch

from tpserve.models.config import ModelConfig


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


def weight_bytes(model: ModelConfig, element_bytes: int = 2) -> int:
    """Bytes of all weights (what one decode step reads once, summed over ranks)."""
    h, hd = model.hidden_size, model.head_dim
    attention = h * (model.num_heads + 2 * model.num_kv_heads) * hd + model.num_heads * hd * h
    mlp = 3 * h * model.intermediate_size
    embeddings = model.vocab_size * h * (1 if model.tie_word_embeddings else 2)
    return element_bytes * (model.num_layers * (attention + mlp + 2 * h) + embeddings + h)


def kv_bytes_per_token(model: ModelConfig, element_bytes: int = 2) -> int:
    return element_bytes * model.num_layers * 2 * model.num_kv_heads * model.head_dim


def workload_roofline_s(workload: list[tuple[int, int]], model: ModelConfig, bandwidth: float, tp: int) -> float:
    """Fewest seconds a batch of (input, output) length requests can take, bound by HBM reads.

    Best case: every request decodes in one batch from the start, so the weights are read once
    per step for as many steps as the longest output, and each generated token reads its
    sequence's KV cache once. Each of `tp` ranks reads its share in parallel.
    """
    steps = max(out for _, out in workload)
    kv_reads = sum(inp * out + out * (out + 1) // 2 for inp, out in workload) * kv_bytes_per_token(model)
    return (steps * weight_bytes(model) + kv_reads) / tp / bandwidth

"""GPU check: the fused flashinfer kernels equal the torch reference ops they replace (bf16).

Each op runs both ways on fresh random inputs (non-contiguous q/k views, as the model passes
them): RMSNorm, the fused residual add + RMSNorm, q/k RMSNorm on a strided slice, rotary (llama3 scaling),
SiLU-and-multiply, the in-place q/k RMSNorm; and the one-kernel K/V cache write equals two separate writes;
the fused rotary + K/V store kernel (attention/rope_store.py) against flashinfer's rotary and the
indexed store. Then a whole decoder (dummy weights, torch attention) computes logits with the fused
kernels and with the reference ops, and one more with flashinfer attention and the rotary + store
kernel. Relative norm errors must stay within bf16 rounding. Exits non-zero
on any mismatch.

    python bench/check_kernels.py
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from model_dirs import SHAPES, shape_model_dir
from numerics import relative_error

from tpserve.attention.rope_store import ROPE_STORE_ENV, rope_and_store
from tpserve.core.batch import ForwardBatch
from tpserve.distributed.group import TPGroup
from tpserve.engine.config import EngineConfig
from tpserve.engine.runner import ModelRunner
from tpserve.kvcache.paged_cache import KVCacheShape, PagedKVCache
from tpserve.layers.kernels import reference_ops
from tpserve.layers.norm import RMSNorm
from tpserve.layers.rotary import RopeConfig, RotaryEmbedding

DEVICE = torch.device("cuda", 0)
DTYPE = torch.bfloat16


def check_ops() -> dict[str, float]:
    errors = {}
    norm = RMSNorm(4096, 1e-5, DTYPE, DEVICE)
    norm.weight.normal_()
    assert norm.kernels is not None, "flashinfer kernels are not in use"
    x = torch.randn(37, 4096, dtype=DTYPE, device=DEVICE)
    errors["rmsnorm"] = relative_error(norm(x), norm._reference(x))
    residual = torch.randn_like(x)
    fused_out, fused_sum = norm.add_and_norm(x.clone(), residual.clone())
    errors["add_rmsnorm_sum"] = relative_error(fused_sum, x + residual)
    errors["add_rmsnorm"] = relative_error(fused_out, norm._reference(x + residual))

    rope = RopeConfig(
        theta=500000.0,
        rope_type="llama3",
        factor=8.0,
        low_freq_factor=1.0,
        high_freq_factor=4.0,
        original_max_position_embeddings=8192,
    )
    rotary = RotaryEmbedding(rope, 128, 4096, DTYPE, DEVICE)
    qkv = torch.randn(37, (32 + 8 + 8) * 128, dtype=DTYPE, device=DEVICE)
    q, k, _ = qkv.split([32 * 128, 8 * 128, 8 * 128], dim=-1)
    q, k = q.view(37, 32, 128), k.view(37, 8, 128)
    positions = torch.randint(0, 4096, (37,), device=DEVICE)
    with reference_ops(rotary):
        q_ref, k_ref = rotary(positions, q.clone(), k.clone())
    q_fused, k_fused = rotary(positions, q, k)
    errors["rope_q"], errors["rope_k"] = relative_error(q_fused, q_ref), relative_error(k_fused, k_ref)

    head_norm = RMSNorm(128, 1e-6, DTYPE, DEVICE)  # Qwen3's q/k norm, on the strided q slice
    head_norm.weight.normal_()
    q_view = torch.randn_like(qkv).split([32 * 128, 16 * 128], dim=-1)[0].view(37, 32, 128)
    errors["qk_rmsnorm"] = relative_error(head_norm(q_view), head_norm._reference(q_view))
    # In place, as the model runs it: the q slice is normalised inside the QKV buffer, the rest untouched.
    buffer = torch.randn_like(qkv)
    untouched = buffer[:, 32 * 128 :].clone()
    q_slice = buffer[:, : 32 * 128].view(37, 32, 128)
    expected = head_norm._reference(q_slice)
    in_place = head_norm.norm_heads_in_place(q_slice)
    if in_place.data_ptr() != buffer.data_ptr() or not torch.equal(buffer[:, 32 * 128 :], untouched):
        raise SystemExit("FAIL: the in-place q/k norm did not write into the QKV buffer's own slice")
    errors["qk_rmsnorm_in_place"] = relative_error(buffer[:, : 32 * 128].view(37, 32, 128), expected)

    gate_up = torch.randn(37, 2 * 7168, dtype=DTYPE, device=DEVICE)
    gate, up = gate_up.split(7168, dim=-1)
    errors["silu_and_mul"] = relative_error(norm.kernels.activation.silu_and_mul(gate_up), F.silu(gate) * up)
    return errors


def check_kv_write() -> None:
    """k and v as slices of one QKV output go into the cache in one write: same cache as two."""
    shape = KVCacheShape(num_layers=1, num_pages=64, page_size=16, num_kv_heads=8, head_dim=128)
    one, two = (PagedKVCache(shape, DTYPE, DEVICE) for _ in range(2))
    qkv = torch.randn(37, (32 + 8 + 8) * 128, dtype=DTYPE, device=DEVICE)
    _, k, v = (t.view(37, -1, 128) for t in qkv.split([32 * 128, 8 * 128, 8 * 128], dim=-1))
    flat = torch.randperm(65 * 16, device=DEVICE)[:37]  # distinct slots, the padding page included
    slots = one.slots(flat // 16, flat % 16)
    one.write(0, slots, k, v)
    two.write(0, slots, k.clone(), v.clone())
    if not torch.equal(one.layers[0], two.layers[0]):
        raise SystemExit("FAIL: the one-write K/V path stores different values")


def check_rope_store() -> dict[str, float]:
    """q rotated in place and the cache rows written, as flashinfer's rotary and the indexed store do."""
    rope = RopeConfig(theta=500000.0, rope_type="llama3", factor=8.0)
    rotary = RotaryEmbedding(rope, 128, 4096, DTYPE, DEVICE)
    shape = KVCacheShape(num_layers=1, num_pages=64, page_size=16, num_kv_heads=8, head_dim=128)
    fused_cache, reference_cache = (PagedKVCache(shape, DTYPE, DEVICE) for _ in range(2))
    qkv = torch.randn(37, (32 + 8 + 8) * 128, dtype=DTYPE, device=DEVICE)
    q, k, v = (t.view(37, -1, 128) for t in qkv.split([32 * 128, 8 * 128, 8 * 128], dim=-1))
    positions = torch.randint(0, 4096, (37,), device=DEVICE)
    flat = torch.randperm(65 * 16, device=DEVICE)[:37]
    slots = fused_cache.slots(flat // 16, flat % 16)
    q_ref, k_ref = rotary(positions, q.clone(), k.clone())
    reference_cache.write(0, slots, k_ref, v.clone())
    assert rotary.fused_table is not None
    rows = fused_cache.layers[0].view(-1, 8, 128)
    rope_and_store(q, k, v, positions, rotary.fused_table, rows, slots)
    return {
        "rope_store_q": relative_error(q, q_ref),
        "rope_store_cache": relative_error(fused_cache.layers[0], reference_cache.layers[0]),
    }


def check_model(shape: Path, attention: str = "torch") -> float:
    with shape_model_dir(shape) as model_dir:
        config = EngineConfig(
            model_path=str(model_dir),
            device="cuda",
            dtype="bfloat16",
            load_format="dummy",
            attention_backend=attention,
            context_length=512,
            max_total_tokens=4096,
            disable_cuda_graph=True,
        )
        runner = ModelRunner(config, config.validate(), TPGroup(rank=0, world_size=1, device=DEVICE))
    prompt = torch.randint(0, runner.model_config.vocab_size, (100,)).tolist()
    plan = ForwardBatch.fresh(prompt, [100], [100], [list(range(7))], [True])
    fused = runner.forward(plan).float()
    with reference_ops(runner.model):
        reference = runner.forward(plan).float()
    return relative_error(fused, reference)


def main() -> None:
    errors = check_ops()
    check_kv_write()
    errors |= check_rope_store()
    errors["model_logits"] = check_model(SHAPES / "qwen3-0.6b.json")
    os.environ[ROPE_STORE_ENV] = "1"  # read when the attention backend is built
    errors["model_logits_rope_store"] = check_model(SHAPES / "qwen3-0.6b.json", attention="fi")
    print(json.dumps(errors, indent=2))
    limits = {name: (5e-2 if name.startswith("model_logits") else 1e-2) for name in errors}
    bad = [name for name, error in errors.items() if not error < limits[name]]
    if bad:
        raise SystemExit(f"FAIL: fused kernels differ from the reference: {bad}")
    print("OK")


if __name__ == "__main__":
    main()

"""The tensor-parallel all-reduce: NCCL, or a one-shot over peer (symmetric) memory for small messages.

A decode step all-reduces batch x hidden values twice per layer. At small batches these messages
are tens of kilobytes and the cost is latency, not bandwidth: NCCL's protocol costs ~14 us inside
a CUDA graph on 2xH200, a one-shot kernel that reads every peer's buffer over NVLink ~7 us. Large
messages (prefill) stay on NCCL, whose bandwidth is better there. The one-shot kernel is torch's
symmetric-memory `one_shot_all_reduce_copy`, which copies the local input into this rank's
symmetric buffer, waits for all peers, sums every peer's buffer, and waits again before returning,
so one buffer can be reused call after call and inside CUDA graphs.

Multicast (NVLink SHARP, "multimem") is never used: on shared hosts it can wedge the GPUs, so the
symmetric-memory allocator is told not to set it up at all.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)

# Above this size NCCL wins (its bandwidth grows, the one-shot kernel reads world_size copies):
# on 2xH200 inside a graph one-shot took 11.8 vs 13.1 us at 512 KiB, 21.9 vs 29.7 at 2 MiB, 39.3 vs 35.3 at 4 MiB.
# Measured with bench/all_reduce.py; see docs/performance.md.
ONE_SHOT_MAX_BYTES = 2 * 1024 * 1024
SUPPORTED_DTYPES = (torch.bfloat16, torch.float32)


@dataclass(frozen=True)
class CustomAllReduceRequest:
    """What the custom all-reduce needs to know to decide whether it may run."""

    device_kind: str
    world_size: int
    nnodes: int
    dtype: torch.dtype
    disabled: bool  # --disable-custom-all-reduce
    p2p_check: bool  # --enable-p2p-check


def custom_all_reduce_refusal(request: CustomAllReduceRequest) -> str | None:
    """Why the custom all-reduce cannot be used (None when it can be tried)."""
    if request.disabled:
        return "--disable-custom-all-reduce"
    if request.world_size == 1:
        return "tp=1 needs no all-reduce"
    if request.device_kind != "cuda":
        return "not on CUDA"
    if request.nnodes > 1:
        return "ranks span several nodes (peer memory is per node)"
    if request.dtype not in SUPPORTED_DTYPES:
        return f"dtype {request.dtype} (one-shot supports bfloat16 and float32)"
    return None


def peers_unreachable(local_ranks: range) -> list[tuple[int, int]]:
    """GPU pairs among this node's ranks that cannot read each other's memory directly."""
    return [(a, b) for a in local_ranks for b in local_ranks if a != b and not torch.cuda.can_device_access_peer(a, b)]


class OneShotAllReduce:
    """Sum over ranks through one symmetric buffer of `max_bytes`; a collective to construct."""

    def __init__(self, device: torch.device, dtype: torch.dtype, max_bytes: int = ONE_SHOT_MAX_BYTES) -> None:
        os.environ.setdefault("TORCH_SYMM_MEM_DISABLE_MULTICAST", "1")
        import torch.distributed._symmetric_memory as symm_mem

        self.dtype = dtype
        self.max_bytes = max_bytes
        world = dist.group.WORLD
        assert world is not None, "the default process group is initialised before all-reduce is built"
        self.group_name = world.group_name
        element = torch.empty((), dtype=dtype).element_size()
        self.buffer = symm_mem.empty(max_bytes // element, dtype=dtype, device=device)
        symm_mem.rendezvous(self.buffer, self.group_name)

    def accepts(self, tensor: torch.Tensor) -> bool:
        nbytes = tensor.numel() * tensor.element_size()
        # The kernel moves 16-byte vectors; odd sizes would fall to a slower alignment.
        return (
            tensor.dtype == self.dtype and tensor.is_contiguous() and 0 < nbytes <= self.max_bytes and nbytes % 16 == 0
        )

    def __call__(self, tensor: torch.Tensor) -> torch.Tensor:
        out = torch.empty_like(tensor)
        staging = self.buffer[: tensor.numel()].view_as(tensor)
        torch.ops.symm_mem.one_shot_all_reduce_copy_out(staging, tensor, "sum", self.group_name, out)
        return out


def try_one_shot(request: CustomAllReduceRequest, device: torch.device, ranks_per_node: int) -> OneShotAllReduce | None:
    """The one-shot all-reduce if it can run here, else None (NCCL for everything), with the reason logged."""
    refusal = custom_all_reduce_refusal(request)
    if refusal is None and request.p2p_check:
        missing = peers_unreachable(range(ranks_per_node))
        if missing:
            refusal = f"no peer access between GPUs {missing}"
    if refusal is not None:
        log.info("custom all-reduce off (%s): NCCL for every all-reduce", refusal)
        return None
    try:
        reducer = OneShotAllReduce(device, request.dtype)
    except Exception as exc:  # an unusable fabric must not stop serving: NCCL still works
        log.warning("custom all-reduce unavailable (%s: %s): using NCCL", type(exc).__name__, exc)
        return None
    log.info("custom all-reduce on: one-shot over peer memory up to %d KiB, NCCL above", reducer.max_bytes // 1024)
    return reducer

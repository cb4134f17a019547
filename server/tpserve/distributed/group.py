"""Process-group setup and the few collectives tensor parallelism needs.

Tensors travel over the default group (NCCL on GPU, gloo on CPU); step plans and control
messages travel over a separate gloo group so that a CPU-side broadcast never queues behind
GPU work. Multi-node is a launch concern only: a rank just needs the rendezvous address,
the world size and its own rank.
"""

from __future__ import annotations

import datetime
import logging
import uuid
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.distributed as dist
from torch.distributed.distributed_c10d import PrefixStore, Store

from .plan_channel import SharedMemoryBroadcast, TooLarge

log = logging.getLogger(__name__)
PLAN_CHANNEL_KEY = "tpserve/plan_channel"


class SmallAllReduce(Protocol):
    """A faster all-reduce for the messages it accepts (all_reduce.OneShotAllReduce)."""

    def accepts(self, tensor: torch.Tensor) -> bool: ...

    def __call__(self, tensor: torch.Tensor) -> torch.Tensor: ...


@dataclass
class TPGroup:
    rank: int
    world_size: int
    device: torch.device
    control: Any = None  # gloo ProcessGroup for pickled control messages
    # Optional fast path for small messages (see all_reduce.py); NCCL/gloo handles the rest.
    small_all_reduce: SmallAllReduce | None = None
    # Shared-memory channel for rank 0's broadcasts when every rank is on one node (plan_channel.py).
    plan_channel: SharedMemoryBroadcast | None = None

    @property
    def is_leader(self) -> bool:
        return self.rank == 0

    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum over ranks. May return a new tensor: always use the result."""
        if self.world_size == 1:
            return tensor
        if self.small_all_reduce is not None and self.small_all_reduce.accepts(tensor):
            return self.small_all_reduce(tensor)
        dist.all_reduce(tensor)
        return tensor

    def gather_last_dim_to_leader(self, tensor: torch.Tensor) -> torch.Tensor:
        """On rank 0, every rank's slice concatenated along the last dimension; on the others,
        their own slice. Vocab-parallel logits: only rank 0 samples, so only it receives them
        (an all-gather would also send every follower the whole vocabulary's logits each step)."""
        if self.world_size == 1:
            return tensor
        tensor = tensor.contiguous()
        if not self.is_leader:
            dist.gather(tensor, None, dst=0)
            return tensor
        parts = [torch.empty_like(tensor) for _ in range(self.world_size)]
        dist.gather(tensor, parts, dst=0)
        return torch.cat(parts, dim=-1)

    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's `obj` on every rank (other ranks pass None)."""
        if self.world_size == 1:
            return obj
        if self.plan_channel is not None:
            if self.is_leader:
                if self.plan_channel.send(obj):
                    return obj
            else:
                received = self.plan_channel.receive()
                if not isinstance(received, TooLarge):
                    return received
        box = [obj]
        dist.broadcast_object_list(box, src=0, group=self.control)
        return box[0]

    def broadcast_tensor(self, tensor: torch.Tensor) -> torch.Tensor:
        """Rank 0's `tensor` into every rank's `tensor` (same shape and dtype), queued on the stream."""
        if self.world_size > 1:
            dist.broadcast(tensor, src=0)
        return tensor

    def all_min_int(self, value: int) -> int:
        if self.world_size == 1:
            return value
        t = torch.tensor([value], dtype=torch.int64)
        dist.all_reduce(t, op=dist.ReduceOp.MIN, group=self.control)
        return int(t.item())

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier(group=self.control)


def init_tp_group(
    store: Store,
    world_size: int,
    rank: int,
    device_kind: str,
    local_rank: int,
    timeout_s: float,
    single_node: bool = False,
) -> TPGroup:
    if device_kind == "cuda":
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if world_size == 1:
        return TPGroup(rank=0, world_size=1, device=device)
    timeout = datetime.timedelta(seconds=timeout_s)
    backend = "nccl" if device_kind == "cuda" else "gloo"
    dist.init_process_group(
        backend=backend,
        store=PrefixStore("tpserve/pg", store),
        world_size=world_size,
        rank=rank,
        timeout=timeout,
        device_id=device if device_kind == "cuda" else None,
    )
    control = dist.new_group(backend="gloo", timeout=timeout) if backend != "gloo" else dist.group.WORLD
    channel = _open_plan_channel(store, world_size, rank, timeout_s) if single_node else None
    return TPGroup(rank=rank, world_size=world_size, device=device, control=control, plan_channel=channel)


def _open_plan_channel(store: Store, world_size: int, rank: int, timeout_s: float) -> SharedMemoryBroadcast | None:
    """Rank 0 creates the segment and publishes its name ("" if it could not: all ranks use gloo)."""
    if rank == 0:
        name = f"tpserve-plan-{uuid.uuid4().hex[:16]}"
        try:
            channel: SharedMemoryBroadcast | None = SharedMemoryBroadcast(name, world_size, rank, True, timeout_s)
        except OSError as exc:
            log.warning("no shared memory for step plans (%s): broadcasting them over gloo", exc)
            channel, name = None, ""
        store.set(PLAN_CHANNEL_KEY, name)
        return channel
    name = store.get(PLAN_CHANNEL_KEY).decode()
    return SharedMemoryBroadcast(name, world_size, rank, False, timeout_s) if name else None


def destroy_tp_group(group: TPGroup) -> None:
    if group.plan_channel is not None:
        group.plan_channel.close()
    if group.world_size > 1 and dist.is_initialized():
        dist.destroy_process_group()

"""The shared-memory channel that carries rank 0's step plans to the ranks of its node."""

from __future__ import annotations

import threading
import uuid

import pytest

from tpserve.core.batch import ForwardBatch
from tpserve.distributed.plan_channel import CAPACITY_BYTES, ChannelTimeout, SharedMemoryBroadcast, TooLarge
from tpserve.testing.ranks import run_on_ranks


def _channel(world_size: int) -> tuple[SharedMemoryBroadcast, list[SharedMemoryBroadcast]]:
    name = f"tpserve-test-{uuid.uuid4().hex[:12]}"
    writer = SharedMemoryBroadcast(name, world_size, 0, create=True, timeout_s=10)
    readers = [
        SharedMemoryBroadcast(name, world_size, rank, create=False, timeout_s=10) for rank in range(1, world_size)
    ]
    return writer, readers


def test_every_reader_gets_every_message_in_order() -> None:
    writer, readers = _channel(world_size=3)
    messages = [ForwardBatch.fresh([i] * (i + 1), [i + 1], [i + 1], [[i]], [True]) for i in range(40)]
    messages.append({"big": list(range(200_000))})  # larger than any earlier payload
    received: dict[int, list[object]] = {r.rank: [] for r in readers}

    def read(reader: SharedMemoryBroadcast) -> None:
        for _ in messages:
            received[reader.rank].append(reader.receive())

    threads = [threading.Thread(target=read, args=(r,)) for r in readers]
    for t in threads:
        t.start()
    for message in messages:  # the writer waits for both acknowledgements before overwriting
        writer.send(message)
    for t in threads:
        t.join(timeout=30)
    assert received == {1: messages, 2: messages}
    for channel in (*readers, writer):
        channel.close()


def test_a_silent_writer_times_out_instead_of_hanging() -> None:
    name = f"tpserve-test-{uuid.uuid4().hex[:12]}"
    writer = SharedMemoryBroadcast(name, 2, 0, create=True, timeout_s=10)
    reader = SharedMemoryBroadcast(name, 2, 1, create=False, timeout_s=0.2)
    with pytest.raises(ChannelTimeout, match="rank 1"):
        reader.receive()
    reader.close()
    writer.close()


def test_a_plan_larger_than_the_channel_is_announced_for_the_fallback() -> None:
    writer, [reader] = _channel(world_size=2)
    assert writer.send(b"x" * (CAPACITY_BYTES + 1)) is False
    assert isinstance(reader.receive(), TooLarge)
    assert writer.send("small") is True and reader.receive() == "small"
    for channel in (reader, writer):
        channel.close()


def _oversized_broadcast(group, payload_bytes: int) -> int:  # type: ignore[no-untyped-def]
    assert group.plan_channel is not None
    got = group.broadcast_object(b"y" * payload_bytes if group.is_leader else None)
    small = group.broadcast_object("after" if group.is_leader else None)
    assert small == "after" and got == b"y" * payload_bytes  # checked on every rank
    return len(got)


def test_oversized_plans_reach_every_rank_over_gloo() -> None:
    assert run_on_ranks(2, "cpu", _oversized_broadcast, CAPACITY_BYTES + 10, timeout_s=120) == CAPACITY_BYTES + 10

"""What must hold of the scheduler's pages after every step, whatever happened before."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from tpserve.engine.sampling import SampleResult
from tpserve.engine.scheduler import ScheduledStep, Scheduler, Sequence, StepOutput
from tpserve.kvcache.radix_cache import RadixNode


def tree_nodes(scheduler: Scheduler) -> list[RadixNode]:
    assert scheduler.radix is not None
    nodes, stack = [], list(scheduler.radix.root.children.values())
    while stack:
        node = stack.pop()
        nodes.append(node)
        stack.extend(node.children.values())
    return nodes


def check_invariants(scheduler: Scheduler) -> None:
    """Every page is exactly one of: free, in the tree, or a running sequence's own; refs add up."""
    running = scheduler.running
    owners: Counter[int] = Counter(scheduler.pages._free)
    nodes = tree_nodes(scheduler) if scheduler.radix is not None else []
    owners.update(node.page for node in nodes)
    for seq in running:
        owners.update(seq.pages[len(seq.nodes) :])
        assert [n.page for n in seq.nodes] == seq.pages[: len(seq.nodes)], "locked nodes head the page table"
        assert all(n.in_tree for n in seq.nodes), f"{seq.request_id} holds an evicted page"
        assert len(seq.pages) * scheduler.limits.page_size >= seq.num_cached
    rows = [seq.row for seq in running]
    assert len(set(rows)) == len(rows) and all(0 <= r < scheduler.limits.max_running for r in rows), "rows clash"
    doubled = [page for page, count in owners.items() if count > 1]
    assert not doubled, f"pages owned twice: {doubled}"
    assert sorted(owners) == list(range(scheduler.limits.num_pages)), "a page leaked"
    for seq in scheduler.waiting:
        assert not seq.pages and not seq.nodes, f"waiting {seq.request_id} holds pages"
        assert seq.num_cached == 0, f"waiting {seq.request_id} claims cached tokens"
        assert seq.row == -1 and seq.num_pending == 0, f"waiting {seq.request_id} holds a row or planned tokens"
    if scheduler.radix is not None:
        locks = Counter(id(n) for seq in running for n in seq.nodes)
        for node in nodes:
            assert node.refs == locks[id(node)], "a node's reference count is not its lockers"
        assert scheduler.radix.num_evictable == sum(1 for n in nodes if n.refs == 0)


def check_idle(scheduler: Scheduler) -> None:
    """Nothing running: every reference count is zero and every page free or evictable."""
    check_invariants(scheduler)
    assert not scheduler.has_work
    assert scheduler.pages_in_use == 0


def run_step(scheduler: Scheduler, token: int = 7) -> list[StepOutput]:
    """Plan one step, "sample" `token` for every sampling row, and return everything that ended."""
    step = scheduler.schedule()
    ended = scheduler.take_finished_in_planning()
    if step is None:
        assert ended, "no step planned although nothing ended"
        return ended
    return ended + scheduler.update(step, [SampleResult(token, None)] * len(step.sampled))


class OverlappedSteps:
    """Drives a scheduler as the leader loop does with overlap: plan step N+1, then read back N.

    `token()` gives each sampling row's "sampled" token, in order.
    """

    def __init__(self, scheduler: Scheduler, token: Callable[[], int]) -> None:
        self.scheduler = scheduler
        self.token = token
        self.in_flight: ScheduledStep | None = None

    @property
    def busy(self) -> bool:
        return self.scheduler.has_work or self.in_flight is not None

    def step(self) -> list[StepOutput]:
        step = self.scheduler.schedule()
        outputs = self.scheduler.take_finished_in_planning()
        if step is None and self.in_flight is None:
            assert outputs, "no step planned although nothing ended and nothing is in flight"
        if self.in_flight is not None:
            samples = [SampleResult(self.token(), None) for _ in self.in_flight.sampled]
            outputs += self.scheduler.update(self.in_flight, samples)
        self.in_flight = step
        return outputs


def computed_from(step: ScheduledStep | None, seq: Sequence) -> int | None:
    """The first position `step` computes for `seq` (its cached prefix); None if it has no row."""
    assert step is not None
    for i, planned in enumerate(step.seqs):
        if planned is seq:
            return int(step.batch.context_lens[i] - step.batch.query_lens[i])
    return None

"""Radix prefix cache over full KV pages: sequences with a common prefix share its pages.

One tree node per full page, keyed by the `page_size` token ids the page holds; a node's path
from the root is the whole prefix, so a page is only ever shared by sequences whose tokens agree
from position 0 (the K/V of a position depend on every token before it). Running sequences lock
the nodes they read (a reference count); a node nobody locks stays cached and is evicted, least
recently used leaf first, when the allocator runs short. Lives on rank 0 with the scheduler:
every rank follows the page ids it decides.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field

from .allocator import PageAllocator


@dataclass(eq=False)  # identity semantics: nodes live in sets and heaps
class RadixNode:
    key: tuple[int, ...]
    page: int
    parent: RadixNode | None
    children: dict[tuple[int, ...], RadixNode] = field(default_factory=dict)
    refs: int = 0
    last_used: int = 0  # a logical clock: larger is more recent
    in_tree: bool = True


class RadixCache:
    def __init__(self, page_size: int, allocator: PageAllocator) -> None:
        self.page_size = page_size
        self.allocator = allocator
        self.root = RadixNode((), -1, None, refs=1)  # never evicted
        self.num_nodes = 0
        self.num_evictable = 0  # cached pages no running sequence locks
        self.num_evicted = 0  # pages evicted since start
        self._clock = itertools.count(1)
        self._lru: list[tuple[int, int, RadixNode]] = []  # (last_used, tiebreak, leaf) candidates
        self._tiebreak = itertools.count()

    def match(self, tokens: Sequence[int], max_pages: int, touch: bool = True) -> list[RadixNode]:
        """The longest cached path of full pages that `tokens` starts with (at most `max_pages`).

        `touch` marks the path as just used (for eviction order); a mere look for scheduling does not.
        """
        path: list[RadixNode] = []
        node = self.root
        now = next(self._clock) if touch else 0
        ps = self.page_size
        while len(path) < max_pages:
            start = len(path) * ps
            child = node.children.get(tuple(tokens[start : start + ps]))
            if child is None:
                break
            if touch:
                child.last_used = now
            path.append(child)
            node = child
        return path

    def lock(self, nodes: Sequence[RadixNode]) -> None:
        for node in nodes:
            if node.refs == 0:
                self.num_evictable -= 1
            node.refs += 1

    def unlock(self, nodes: Sequence[RadixNode]) -> None:
        now = next(self._clock)
        for node in reversed(nodes):  # leaf first, so a freed leaf enters the LRU before its parent
            node.refs -= 1
            node.last_used = now
            if node.refs == 0:
                self.num_evictable += 1
                self._maybe_evictable_leaf(node)

    def insert(self, parent: RadixNode | None, key: tuple[int, ...], page: int) -> tuple[RadixNode, bool]:
        """The node for `key` under `parent` (the root if None), and whether it adopted `page`.

        If another sequence already cached the same tokens, its node is returned and the caller
        keeps (and frees) `page`: the contents are the same.
        """
        parent = parent or self.root
        existing = parent.children.get(key)
        if existing is not None:
            return existing, False
        node = RadixNode(key, page, parent, last_used=next(self._clock))
        parent.children[key] = node
        self.num_nodes += 1
        self.num_evictable += 1
        self._maybe_evictable_leaf(node)
        return node, True

    def evict(self, pages_wanted: int) -> int:
        """Free up to `pages_wanted` unlocked pages, least recently used leaves first."""
        freed: list[int] = []
        while len(freed) < pages_wanted and self._lru:
            stamp, _, node = heapq.heappop(self._lru)
            if not node.in_tree or node.refs or node.children or node.last_used != stamp:
                continue  # locked, grown or touched since it was queued: a newer entry stands for it
            parent = node.parent
            assert parent is not None
            del parent.children[node.key]
            node.in_tree = False
            self.num_nodes -= 1
            self.num_evictable -= 1
            freed.append(node.page)
            self._maybe_evictable_leaf(parent)
        self.allocator.release(freed)
        self.num_evicted += len(freed)
        return len(freed)

    def _maybe_evictable_leaf(self, node: RadixNode) -> None:
        if node is not self.root and node.refs == 0 and not node.children:
            heapq.heappush(self._lru, (node.last_used, next(self._tiebreak), node))

    def pages(self) -> list[int]:
        """Every cached page (for invariant checks in tests)."""
        found: list[int] = []
        stack = list(self.root.children.values())
        while stack:
            node = stack.pop()
            found.append(node.page)
            stack.extend(node.children.values())
        return found

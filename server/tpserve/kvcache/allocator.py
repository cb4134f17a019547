"""The page allocator that hands the KV cache's pages to sequences."""

from __future__ import annotations


class OutOfPages(RuntimeError):
    pass


class PageAllocator:
    """Free-list of page ids. Lives on rank 0 only: the scheduler decides, every rank obeys."""

    def __init__(self, num_pages: int) -> None:
        self.num_pages = num_pages
        self._free = list(range(num_pages - 1, -1, -1))

    @property
    def num_free(self) -> int:
        return len(self._free)

    @property
    def num_used(self) -> int:
        return self.num_pages - len(self._free)

    def allocate(self, count: int) -> list[int]:
        if count > len(self._free):
            raise OutOfPages(f"asked for {count} pages, {len(self._free)} free")
        taken = self._free[len(self._free) - count :]
        del self._free[len(self._free) - count :]
        return taken

    def release(self, pages: list[int]) -> None:
        self._free.extend(pages)

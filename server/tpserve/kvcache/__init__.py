"""KV cache: paged storage on every rank and the page allocator the scheduler owns on rank 0.

Imports `core` only.
"""

"""Helpers for tests, benchmarks and the demo: tiny checkpoints, rank harnesses, health polling.

May import the engine and every layer below it; only `entrypoints` (the demo) imports it.
"""

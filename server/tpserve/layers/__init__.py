"""Tensor-parallel building blocks of a decoder: linear layers, embeddings, norms, rotary.

Each module holds only this rank's shard and lists, through `weight_specs`, the checkpoint
slices that fill it. Imports `distributed` and `core` only.
"""

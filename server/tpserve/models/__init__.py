"""Models: checkpoint configs, the decoder families built from `layers`, and weight loading.

Imports `layers`, `attention`, `kvcache`, `distributed` and `core`.
"""

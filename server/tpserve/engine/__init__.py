"""The engine: scheduler, sampling, the model runner with its CUDA graphs, the rank worker loop,
the launcher of rank processes, and the offline `LLM`.

Imports every layer below it (`models`, `attention`, `kvcache`, `layers`, `distributed`,
`core`), never `entrypoints`.
"""

"""Process groups and the traffic between ranks: all-reduce, the plan channel, the status board.

Imports `core` only (no model, cache or engine code).
"""

"""Plain data every layer shares: the step plan (`ForwardBatch`) and user-facing errors.

The bottom layer: imports nothing from the rest of tpserve.
"""

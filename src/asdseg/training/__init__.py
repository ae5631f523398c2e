"""Training: configuration, data sampling, the papers' recipes and the loop that runs them.

Planning (``config``), data (``data``), the per-paper update rules (``recipes``) and the loop
with its logs, curves and checkpoints (``trainer``) are kept apart, as in nnU-Net.
"""

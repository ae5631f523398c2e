"""Attention-guided active learning: which axial slices to label next, sparse slice labels,
fine-tuning on them, and when to stop."""

"""Experiment planning: a dataset's fingerprint, a measured memory trial and the training
plan made from them (``asdseg plan``, and ``asdseg train --dataset``)."""

"""Segmenting a volume with a model: sliding-window prediction, post-processing, the
calibrated confidence map, and outputs on the input's voxel grid."""

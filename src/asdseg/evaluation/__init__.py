"""How good a segmentation or a model is: metrics, evaluation of label files and of models on
held-out cases, calibration of confidence maps, and figures of all of these."""

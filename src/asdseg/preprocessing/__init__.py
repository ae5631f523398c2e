"""From a volume as read to the network's input: checks on its values and spacing, the region
of interest, and the resampling, normalisation and cropping a model card names."""

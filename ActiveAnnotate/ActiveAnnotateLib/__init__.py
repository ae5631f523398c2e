"""ActiveAnnotate's Qt-free logic: slice suggestions, labelled slices, fine-tuning rounds."""

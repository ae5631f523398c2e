"""ActiveAnnotate's Qt-free logic: slice suggestions, labelled slices, fine-tuning rounds."""

# Before any module of this package imports the engine: importing ASDSegLib makes it importable
# from a source checkout (see ASDSegLib).
import ASDSegLib  # noqa: F401

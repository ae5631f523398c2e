# Two commands on a fresh clone: `make demo` (the main job) and `make test` (lint + tests).
# Both create the virtual environment in .venv and install the package first when needed.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test test-all benchmark clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

demo: $(BIN)/.installed
	$(BIN)/asdseg demo --output-dir demo_output

test: $(BIN)/.installed
	$(BIN)/ruff check src Testing benchmarks tools ASDSeg ActiveAnnotate
	# What 3D Slicer runs must work on Python 3.9 (Slicer 5.8).
	$(BIN)/vermin -t=3.9- --violations --eval-annotations --no-tips src ASDSeg ActiveAnnotate
	# The default run stays under 15 minutes on 2 cores; make test-all adds the slow tests.
	$(BIN)/python -m pytest -q -m "not slow"

test-all: test
	$(BIN)/python -m pytest -q -m slow

# Writes benchmarks/results/inference_speed.json (kept in git, with the machine it ran on).
benchmark: $(BIN)/.installed
	$(BIN)/python benchmarks/inference_speed.py

clean:
	rm -rf $(VENV) demo_output

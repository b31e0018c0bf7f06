# The README's two set-up commands: `make demo` (the main job) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# This machine's pip serves these CPU-capable builds from disk; elsewhere override TORCH_SPEC.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1

.PHONY: demo test install

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet $(TORCH_SPEC)
	$(BIN)/pip install --quiet -e '.[test,demo,onnx,serve]'
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/transferkit demo

test: install
	$(BIN)/python -m pytest -q -m "slow or not slow"  # everything, the slow tests included

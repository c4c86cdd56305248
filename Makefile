# eye-model: `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.DEFAULT_GOAL := help

help: ## List the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "$(PYTHON) not found: install Python 3.11 or run make PYTHON=python3"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP) ## Create .venv and install eye-model with its dev dependencies

quickstart: $(STAMP) ## Run the whole lifecycle on embedded defaults (synthetic data, local servers)
	PATH="$(CURDIR)/$(BIN):$$PATH" bash scripts/quickstart.sh

test: $(STAMP) ## Run the whole test suite (slow tests included), slowest tests listed
	$(BIN)/python -m pytest

test-fast: $(STAMP) ## Run the tests that are not marked slow
	$(BIN)/python -m pytest -m "not slow"

lint: $(STAMP) ## Check style, common slips (ruff) and types (mypy)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(STAMP) ## Rewrite files to the project style (ruff)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

benchmark: $(STAMP) ## Measure prediction speed against the raw network
	$(BIN)/python scripts/benchmark_predict.py

clean: ## Remove the virtual environment and caches
	rm -rf $(VENV) .pytest_cache .ruff_cache

.PHONY: help install quickstart test test-fast lint format benchmark clean

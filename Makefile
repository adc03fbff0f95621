# The two commands a newcomer needs: `make demo` and `make test`.
# Both create .venv if it is missing and install the project with its dev extras.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# Reinstall whenever pyproject.toml changes.
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-16)

.PHONY: setup demo test lint types layers unit bench clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "modelfleet needs Python >= 3.11")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	rm -f $(VENV)/.installed-*
	touch $@

setup: $(STAMP)

demo: setup
	$(BIN)/modelfleet demo

lint: setup
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

types: setup
	$(BIN)/mypy

layers: setup
	$(BIN)/lint-imports

unit: setup
	$(BIN)/pytest

test: lint types layers unit

# Server throughput (DESIGN.md section 13); wrk comes from Debian's packages.
bench: setup
	@command -v wrk >/dev/null 2>&1 || apt-get install -y wrk || { apt-get update && apt-get install -y wrk; }
	$(BIN)/python bench/checkin.py

clean:
	rm -rf $(VENV) modelfleet-demo .pytest_cache .mypy_cache .ruff_cache

# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PIP_QUIET := --quiet --disable-pip-version-check

.PHONY: demo test test-all lint format bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install $(PIP_QUIET) -c constraints.txt -e '.[dev]'
	touch $@

demo: $(STAMP)
	$(BIN)/python examples/funnel.py

test: $(STAMP)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check pyro_realnvp tests examples benchmarks
	$(BIN)/ruff format --check pyro_realnvp tests examples benchmarks

format: $(STAMP)
	$(BIN)/ruff format pyro_realnvp tests examples benchmarks
	$(BIN)/ruff check --fix pyro_realnvp tests examples benchmarks

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info

bench: $(STAMP)
	$(BIN)/python -m benchmarks.accuracy --out docs/benchmarks.md

# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PIP_QUIET := --quiet --disable-pip-version-check

.PHONY: demo test test-all lint format clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install $(PIP_QUIET) -c constraints.txt -e '.[dev,lightning]'
	touch $@

demo: $(STAMP)
	$(BIN)/python examples/funnel.py

test: $(STAMP)
	$(BIN)/python -m pytest

test-all: $(STAMP)
	$(BIN)/python -m pytest -m ""

lint: $(STAMP)
	$(BIN)/ruff check pyro_realnvp tests examples benchmarks
	$(BIN)/ruff format --check pyro_realnvp tests examples benchmarks

format: $(STAMP)
	$(BIN)/ruff format pyro_realnvp tests examples benchmarks
	$(BIN)/ruff check --fix pyro_realnvp tests examples benchmarks

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info

# Benchmarks run by hand; each writes its table into docs/. The `bench` extra (zuko, for
# the "zuko RealNVP" column) is installed on top of `dev`; `make test` does not need it.
.PHONY: bench bench-posteriordb bench-speed bench-plain-loop bench-time bench-distributed \
	bench-stability bench-diagnostics
BENCH_STAMP := $(VENV)/.installed-bench

$(BENCH_STAMP): $(STAMP) pyproject.toml constraints.txt
	$(BIN)/python -m pip install $(PIP_QUIET) -c constraints.txt -e '.[dev,lightning,bench]'
	touch $@

bench: $(BENCH_STAMP)
	$(BIN)/python -m benchmarks.accuracy --out docs/benchmarks.md --readme README.md

# The posteriordb posteriors alone (all 37; POSTERIORS="arK garch11" for a subset), a
# scratch run under out/: the published table is `make bench`'s docs/benchmarks.md.
POSTERIORS ?=
bench-posteriordb: $(BENCH_STAMP)
	$(BIN)/python -m benchmarks.accuracy --exact $(if $(POSTERIORS),--posteriors $(POSTERIORS)) \
		--out out/posteriordb.md --results out/posteriordb-fits.jsonl

bench-stability: $(BENCH_STAMP)
	$(BIN)/python -m benchmarks.stability --out docs/stability.md

bench-diagnostics: $(STAMP)
	$(BIN)/python -m benchmarks.diagnostics --out docs/diagnostics.md

bench-speed: $(BENCH_STAMP)
	$(BIN)/python benchmarks/speed.py

# The ELBO each guide reaches against seconds, set-up included (issue 30's time to accuracy).
bench-time: $(BENCH_STAMP)
	$(BIN)/python -m benchmarks.time_to_accuracy --group main
	$(BIN)/python -m benchmarks.time_to_accuracy --group more

# A step of Pyro's own loop (SVI, Adam, Trace_ELBO) for AutoRealNVP and Pyro's guides.
bench-plain-loop: $(STAMP)
	$(BIN)/python -m benchmarks.plain_loop

bench-distributed: $(STAMP)
	$(BIN)/python benchmarks/distributed.py

# Docs and the executed notebook need their own extras, installed once on top of `dev`.
.PHONY: docs notebook
DOCS_STAMP := $(VENV)/.installed-docs

$(DOCS_STAMP): $(STAMP) pyproject.toml constraints.txt
	$(BIN)/python -m pip install $(PIP_QUIET) -c constraints.txt -e '.[dev,lightning,docs,notebook]'
	touch $@

docs: $(DOCS_STAMP)
	$(BIN)/mkdocs build --strict

notebook: $(DOCS_STAMP)
	$(BIN)/jupyter nbconvert --to notebook --execute --inplace examples/tour.ipynb

# The front door. `make demo` and `make test` do all setup on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
PORT   ?= 3000

.PHONY: install demo demo-distributed test test-soak test-fast test-ui dev bench lint format reset clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: install  ## every shipped pipeline: generate data, materialise the whole graph, print summaries
	$(BIN)/ml-platform demo

demo-distributed: install  ## the same demo on PostgreSQL, an MLflow server, 2 Celery workers, Redis
	$(BIN)/python -m ml_platform.production demo --workers 2

test: install  ## the suite, slow end-to-end tests included (what CI runs first), 2 workers by file
	$(BIN)/pytest -q -ra --durations=10 -n 2 --dist loadfile -m "not soak"

test-soak: install  ## the multi-minute production scenarios (CI runs them after `make test`)
	$(BIN)/pytest -q -ra --durations=10 -n 2 --dist loadfile -m soak

test-fast: install  ## skip tests marked slow
	$(BIN)/pytest -q -m "not slow"

test-ui: install  ## the browser tests alone; refreshes docs/images/*.png
	bash .ci/install_ui_deps.sh $(VENV)
	ML_PLATFORM_SCREENSHOT_DIR=docs/images $(BIN)/pytest -q -m ui

dev: install  ## Dagster UI + daemon on http://127.0.0.1:$(PORT)
	$(BIN)/ml-platform dev --port $(PORT)

bench: install  ## benchmarks; figures are ratios against baselines run side by side
	$(BIN)/python bench/pipeline.py

lint: install  ## ruff, and the import layers (pyproject.toml [tool.importlinter])
	$(BIN)/ruff check . && $(BIN)/ruff format --check . && $(BIN)/lint-imports

format: install
	$(BIN)/ruff check --fix . && $(BIN)/ruff format .

reset:  ## forget all runtime state and every pipeline's data products (landing files are kept)
	rm -rf .ml_platform
	find data -mindepth 1 -maxdepth 1 -type d ! -name landing -exec rm -rf {} +

clean: reset
	rm -rf data/landing $(VENV)

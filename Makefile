# Task runner. `make ci` is exactly what CI runs (.ci/run).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup demo test lint check-deploy bench ci kafka-up kafka-down clean

$(BIN)/shadowline: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c .ci/constraints.txt -e ".[dev,text]"
	@touch $@

setup: $(BIN)/shadowline  ## venv + dependencies (Kafka jars come on first `kafka up`)
	deploy/browser/install-chromium.sh

demo: setup  ## the main job: train, shadow, join, store, summarise
	$(BIN)/shadowline demo

test: setup  ## the test suite; starts the real broker itself if none answers
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy shadowline streams consumers

check-deploy:  ## docker compose config + Grafana dashboard schema (needs Go)
	deploy/check.sh

bench: setup
	$(BIN)/python bench/tap_overhead.py

kafka-up: setup
	$(BIN)/shadowline kafka up

kafka-down: setup
	$(BIN)/shadowline kafka down

ci:
	.ci/run

clean:
	rm -rf .shadowline bench/results

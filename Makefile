# Two commands for a fresh Debian machine with Python 3.11:
#   make demo   installs everything and runs the daily pipeline on the embedded default
#   make test   installs everything and runs the whole test suite (what CI runs)
PY ?= python3.11
VENV ?= .venv
CONFIG ?= conf/local.yaml
BIN := $(VENV)/bin

.PHONY: setup demo test lint typecheck dist clean-lake reliability report
setup: $(VENV)/.installed

$(VENV)/.installed: requirements.lock setup.cfg pyproject.toml
	@scripts/check_env.sh $(PY)
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --no-deps -r requirements.lock
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	@touch $@

demo: setup
	$(BIN)/python -m scripts.demo --config $(CONFIG)

test: setup
	$(BIN)/python -m flake8 core features training registry jobs tests scripts benchmarks examples
	$(BIN)/python -m mypy
	$(BIN)/python -m pytest

# docs/RESULTS.md and the figures beside the results files, redrawn from the results JSON (no training;
# each results file names the command that re-measures it)
report: setup
	$(BIN)/python -m benchmarks.figures
	$(BIN)/python -m benchmarks.report

# docs/RELIABILITY.md from the reliability cases of the suite (they also run in `make test`)
reliability: setup
	RELIABILITY_REPORT=docs/RELIABILITY.md $(BIN)/python -m pytest -m reliability -q

lint: setup
	$(BIN)/python -m flake8 core features training registry jobs tests scripts benchmarks examples

typecheck: setup
	$(BIN)/python -m mypy

# Code bundle for clusters: spark-submit --py-files dist/platform.zip jobs/<job>.py ..., e.g. the daily run
# (README "Scheduling"): spark-submit --py-files dist/platform.zip jobs/daily.py --config conf/cluster.yaml --date D
dist:
	rm -rf dist && mkdir -p dist
	zip -qr dist/platform.zip core features training registry jobs -x '*__pycache__*'

clean-lake:
	rm -rf lake mlruns mlartifacts mlflow.db

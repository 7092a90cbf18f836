# Set-up and entry points. `make demo` and `make test` create .venv on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)

# Local runs keep all traffic on loopback and send no usage statistics.
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER ?= 0
export RAY_USAGE_STATS_ENABLED ?= 0

.PHONY: install demo test test-fast ui clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[studies,dev]'
	rm -f $(VENV)/.installed-* && touch $@

demo: install
	$(PY) -m studies.search demo

# The MLflow UI on the studies' store (plain `mlflow ui` would not find mlruns/mlflow.db).
ui: install
	$(VENV)/bin/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlruns/mlflow.db --host 127.0.0.1 --port 5000

# Every test; CI runs this.
test: install
	$(PY) -m pytest -q

# The tests not marked slow (no Ray, no subprocess, no Triton interpreter): under a minute.
test-fast: install
	$(PY) -m pytest -q -m "not slow"

clean:
	rm -rf runs indexes data/demo .pytest_cache mlruns/mlflow.db mlruns/optuna.db mlruns/artifacts

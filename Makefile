# Set-up and entry points. `make demo` and `make test` create .venv on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# studies.search's default --storage-path
DEFAULT_STORAGE := runs/studies
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)

# Local runs keep all traffic on loopback and send no usage statistics.
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER ?= 0
export RAY_USAGE_STATS_ENABLED ?= 0

.PHONY: install demo test test-fast ui clean clean-results

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[studies,dev]'
	rm -f $(VENV)/.installed-* && touch $@

# The demo study, named demo-study, or demo-study-2, -3, ... when that study exists, so that running it again
# starts a new study (with its own MLflow experiment and registered model). ARGS go to studies.search, e.g.
# `make demo ARGS="--seed 1"`; an --experiment there picks the name (`ARGS="--experiment demo-study --resume"`).
demo: install
	@name=demo-study; n=1; while [ -e "$(DEFAULT_STORAGE)/$$name" ]; do n=$$((n + 1)); name=demo-study-$$n; done; \
	echo "demo study: $$name"; $(PY) -m studies.search demo --experiment $$name $(ARGS)

# The MLflow UI on the studies' store (plain `mlflow ui` would not find mlruns/mlflow.db).
ui: install
	$(VENV)/bin/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlruns/mlflow.db --host 127.0.0.1 --port 5000

# Every test; CI runs this. TEST_PROCESSES test processes at once (pytest-xdist), a test file in one of them.
TEST_PROCESSES ?= 2
test: install
	$(PY) -m pytest -q -n $(TEST_PROCESSES) --dist loadgroup --durations=15

# The tests not marked slow (no Ray, no subprocess, no Triton interpreter): under a minute.
test-fast: install
	$(PY) -m pytest -q -n $(TEST_PROCESSES) --dist loadgroup -m "not slow"

# What can be rebuilt: test and Python caches, and the demo data when antimetric generated it (its
# demo-version.txt says so; a data/demo of your own is kept). Results are never removed here.
clean:
	rm -rf .pytest_cache build *.egg-info
	for folder in antimetric studies kernels tests benchmarks; do [ ! -d $$folder ] || find $$folder -name __pycache__ -type d -prune -exec rm -rf {} +; done
	if [ -f data/demo/demo-version.txt ]; then rm -rf data/demo; fi

# Results: trained runs, gallery indexes, the studies' Ray folders, MLflow store and artifacts (registered
# models too) and Optuna record. Lists them and asks first; `make clean-results YES=1` does not ask.
RESULTS := runs indexes mlruns/mlflow.db mlruns/optuna.db mlruns/artifacts
clean-results:
	@found=$$(for path in $(RESULTS); do [ -e "$$path" ] && echo "$$path"; done; true); \
	if [ -z "$$found" ]; then echo "no results to delete"; exit 0; fi; \
	echo "clean-results deletes these results (trained runs, indexes, studies, MLflow and Optuna records):"; \
	du -sh $$found; \
	if [ "$(YES)" != 1 ]; then \
		printf 'delete them? [y/N] '; read answer; \
		case "$$answer" in y|Y|yes) ;; *) echo "nothing deleted"; exit 0;; esac; \
	fi; \
	rm -rf $$found; echo "deleted"

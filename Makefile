# Two commands matter: `make run` (the whole stack) and `make test` (the whole suite).
# Both bootstrap the virtualenv on first use; nothing beyond python3 and make is required.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: run test bench chaos soak migrate token lint format check clean-data docs fuzz

$(STAMP): pyproject.toml requirements.lock
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(PY) -m pip install --quiet --disable-pip-version-check -c requirements.lock -e '.[dev]'
	touch $(STAMP)

# The benchmark also needs the `bench` extra (plots, profiler).
$(VENV)/.installed-bench: $(STAMP)
	$(PY) -m pip install --quiet --disable-pip-version-check -c requirements.lock -e '.[dev,bench]'
	touch $@

run: $(STAMP)
	$(PY) -m shared.devstack

# The suite includes the benchmark harness's own tests, whose plots need the `bench` extra.
test: $(VENV)/.installed-bench
	$(PY) -m pytest $(PYTEST_ARGS)

# `make bench` (BENCH_SCALE=small for a smoke run): results in bench/results/, see docs/performance.md.
bench: $(VENV)/.installed-bench
	$(PY) -m bench

# `make chaos` (CHAOS_ARGS="--clients 50 --faults kill-gateway"): faults under load, table and
# plot in bench/CHAOS.md; needs Debian's nginx. See README, "Run at scale".
chaos: $(VENV)/.installed-bench
	$(PY) -m chaos $(CHAOS_ARGS)

# `make soak` (SOAK_ARGS="--duration 300 --clients 2000"): steady traffic with churn for 30 min,
# the gateways' RSS, descriptors and tasks and Redis's memory with their slopes in bench/SOAK.md.
soak: $(VENV)/.installed-bench
	$(PY) -m chaos.soak $(SOAK_ARGS)

# The API contract (OpenAPI, AsyncAPI) generated from the wire types into docs/api/ (a test fails
# while the committed copies differ from the code).
docs: $(STAMP)
	$(PY) -m shared.contract docs/api

# A longer fuzz than `make test` runs: schemathesis on the public REST API and the WebSocket frame
# fuzz, FUZZ_EXAMPLES examples per operation and mode (frames: 30 times that), randomized,
# printing every request and frame tried and what it got.
FUZZ_EXAMPLES ?= 100
fuzz: $(VENV)/.installed-bench
	FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(PY) -m pytest tests/contract/test_fuzz_rest.py \
		tests/contract/test_fuzz_ws.py -s -q --timeout=0 -p no:cacheprovider

migrate: $(STAMP)
	$(PY) -m shared.migrate

token: $(STAMP)
	@$(PY) -m shared.auth $(USER) $(TTL)

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy shared gateway notifications_svc agent_svc bench chaos tests

format: $(STAMP)
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

check: lint test

clean-data:
	rm -rf .data

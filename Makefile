# jobstore: `make test` and `make run` work on a fresh machine with Python 3.11.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: test lint run bench docs clean fuzz crash

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python setup.cfg pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check src tests bench examples fuzz
	$(BIN)/ruff format --check src tests bench examples fuzz
	$(BIN)/mypy --strict src

# tests/test_serve_process.py counts the store's fsync calls under strace: installed when missing.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

test: lint
	@command -v strace >/dev/null 2>&1 || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq strace; }
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# Development store: the default ports, on loopback only (the Docker image binds 0.0.0.0).
run: $(STAMP)
	$(BIN)/jobstore serve --data-dir ./var --request-endpoint tcp://127.0.0.1:5555 \
		--observe-endpoint tcp://127.0.0.1:5556 --notify-endpoint tcp://127.0.0.1:5557

# Benchmarks against beanstalkd and Redis/RQ (bench/README.md); BENCH_ARGS=--quick for a smoke run.
bench: $(STAMP)
	bash bench/setup.sh
	$(BIN)/python bench/run.py $(BENCH_ARGS)

# Longer robustness runs (docs/operations.md).
fuzz: $(STAMP)
	$(BIN)/python -m pip install --quiet atheris
	mkdir -p var/fuzz-corpus && cp -n fuzz/corpus/* var/fuzz-corpus/
	$(BIN)/python fuzz/fuzz_frames.py -max_total_time=$${FUZZ_SECONDS:-600} var/fuzz-corpus

crash: $(STAMP)
	$(BIN)/python -m pytest -q tests/test_crash.py --crash-rounds $${CRASH_ROUNDS:-500} -o timeout=0

docs: $(STAMP)
	$(BIN)/python -m jobstore.states > docs/states.md

clean:
	rm -rf $(VENV) var build dist src/*.egg-info

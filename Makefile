# jobstore: `make test` and `make run` work on a fresh machine with Python 3.11.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: test lint run bench docs clean fuzz crash docker-check docker-constraints

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python setup.cfg pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check src tests bench examples fuzz scripts
	$(BIN)/ruff format --check src tests bench examples fuzz scripts
	$(BIN)/python scripts/unasync.py --check
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

# Build the image and run it in Databox mode against the fake arbiter (docker/check.sh); needs root,
# and installs and starts dockerd when missing. Not part of `make test`.
docker-check:
	sh docker/check.sh

# Pin the image's dependencies again: a fresh venv with only `pip install .`, frozen.
docker-constraints:
	rm -rf build/constraints-venv && $(PYTHON) -m venv build/constraints-venv
	build/constraints-venv/bin/pip install --quiet .
	{ sed -n '1,2p' docker/constraints.txt; build/constraints-venv/bin/pip freeze --exclude jobstore; } \
		> docker/constraints.txt.new && mv docker/constraints.txt.new docker/constraints.txt
	rm -rf build/constraints-venv

docs: $(STAMP)
	$(BIN)/python -m jobstore.states > docs/states.md

clean:
	rm -rf $(VENV) var build dist src/*.egg-info

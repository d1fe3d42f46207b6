# Two commands on a fresh machine: `make demo` and `make test`. Both install what they need into
# $(VENV) first, and reuse it when it is already there (the stamp is redone when pyproject.toml changes).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.transched-installed
# The CPU-only torch 2.13.0 wheel cannot load torchvision's ops here; this pair runs on CPU and uses CUDA
# where it is present.
TORCH := torch==2.14.1 torchvision==0.29.1

.PHONY: install demo test test-fast bench lint format down clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

demo: install
	$(VENV)/bin/transched demo

# The browser test (tests/service/test_browser.py) drives Debian's chromium; installed only when missing.
CHROMIUM := /usr/bin/chromium

test: install $(CHROMIUM)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m pytest -ra

SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

$(CHROMIUM):
	command -v apt-get >/dev/null || { echo "install Chromium at $@ (tests/service/test_browser.py)"; exit 1; }
	$(SUDO) apt-get update -qq
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium

# The inner loop: unit tests only, no server, no Ray head, no CUDA (see the `slow` and `gpu` markers).
test-fast: install
	$(PY) -m pytest -ra -m "not slow and not gpu" -n 2

# Benchmarks B1-B6 on this machine (< 20 min), their sections of BENCHMARKS.md rewritten. BENCH_ARGS e.g.
# "--only B1,B3" or "--quick" (a smoke run); B7 needs a GPU: `make bench BENCH_ARGS="--only B7"` there.
bench: install
	$(PY) bench/run_all.py $(BENCH_ARGS)

lint: install
	$(PY) -m ruff check .

format: install
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

down:
	$(VENV)/bin/transched down

clean:
	rm -rf .transched runs

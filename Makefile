# Two commands on a fresh machine: `make demo` and `make test`. Both install what they need into
# $(VENV) first, and reuse it when it is already there (the stamp is redone when the lock changes).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.transched-installed
# Every runtime and dev dependency at its exact version (pip-tools' `pip-compile` over pyproject.toml's
# ranges and constraints.txt's torch pair); `make lock` refreshes it, tests/test_lock.py checks it.
LOCK := requirements.lock

.PHONY: install lock demo test test-fast bench lint format down clean

install: $(STAMP)

# --no-deps: the lock is the whole environment, so pip installs it as it is and resolves nothing; `pip
# check` then proves it consistent. The project itself goes in editable, built with the locked setuptools.
$(STAMP): $(LOCK) pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --no-deps -r $(LOCK)
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	$(PY) -m pip check
	touch $@

# Re-resolve every pin to the newest versions the ranges in pyproject.toml allow, from the package index
# pip is configured with. `make lock UPGRADE=` keeps the pins there are (after adding a dependency: only it
# and what it needs are resolved); `UPGRADE=--upgrade-package=ray` moves one package. Then `make install`.
# Not after `install`: with pyproject.toml ahead of the lock, the locked environment fails `pip check`.
UPGRADE ?= --upgrade
lock:
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	test -x $(VENV)/bin/pip-compile || $(PY) -m pip install --quiet $$(grep '^pip-tools==' $(LOCK))
	$(VENV)/bin/pip-compile --quiet --extra dev --strip-extras --allow-unsafe --no-emit-index-url \
		--no-emit-find-links --constraint constraints.txt --output-file $(LOCK) $(UPGRADE) \
		pyproject.toml

demo: install
	$(VENV)/bin/transched demo

# The browser test (tests/service/test_browser.py) drives Debian's chromium; installed only when missing.
CHROMIUM := /usr/bin/chromium

# Two workers, whole modules each (--dist loadfile): an end-to-end module's server and Ray head are module
# fixtures, started once on the worker that runs the module; every head has its own ports and temp dir,
# so two run side by side. Most of an end-to-end test is waiting (a head, a driver, a poll), which the
# other worker fills: the suite takes about half its serial time (BENCHMARKS.md, "Test suite"). The
# `serial` tests then run alone.
test: install $(CHROMIUM)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m pytest -ra -n 2 --dist loadfile -m "not serial"
	$(PY) -m pytest -ra -m serial

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

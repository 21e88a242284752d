# Two commands do all set-up on a fresh machine: `make serve` and `make test`.
# Both bootstrap .venv, install the project and build the compiled core as needed.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PYX    := $(wildcard src/streamcore/*.pyx src/streamcore/*.pxd)
BUILT  := $(VENV)/.built

.PHONY: serve test bench build watch lint typecheck clean fuzz

serve: $(BUILT)
	$(PY) -m streamcore_server serve

test: $(BUILT)
	$(PY) -m pytest $(PYTEST_ARGS)

# Log in as the demo user and print the org's stream as it arrives (run beside `make serve`).
watch: $(BUILT)
	$(PY) -m streamcore_server watch $(WATCH_ARGS)

# api_load drives the app with wrk (a compiled client, so the load generator is not what is
# measured); installed here when missing and the machine lets us.
bench: $(BUILT)
	@command -v wrk >/dev/null 2>&1 || { echo "[setup] installing wrk (apt-get)"; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null 2>&1 || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; } || \
	  echo "[setup] could not install wrk: api_load will say so"; }
	$(PY) -m benchmarks.run $(BENCH_ARGS)

build: $(BUILT)

# Coverage-guided fuzzing (atheris) of every parser of outsiders' bytes; `make test` runs each
# target for 2 s. Crashes land in fuzz/crashes/TARGET/ and become regression tests once fixed.
FUZZ_SECONDS ?= 120
FUZZ_TARGETS ?= frame histogram idempotency_key query json_bodies
fuzz: $(BUILT)
	@mkdir -p fuzz/corpus
	@for t in $(FUZZ_TARGETS); do echo "[fuzz] $$t for $(FUZZ_SECONDS) s"; \
	  $(PY) -m fuzz.run $$t $(FUZZ_SECONDS) 2>fuzz/corpus/$$t.log || { tail -40 fuzz/corpus/$$t.log; exit 1; }; done

lint: $(STAMP)
	$(PY) -m ruff check src tests benchmarks fuzz
	$(PY) -m ruff format --check src tests benchmarks fuzz

typecheck: $(STAMP)
	$(PY) -m mypy

# One line per step, so a first run (a few minutes) says what it is doing.
$(STAMP): pyproject.toml
	@test -x $(PY) || { echo "[setup] creating the environment in $(VENV)"; $(PYTHON) -m venv $(VENV); }
	@echo "[setup] installing pip, setuptools, Cython and numpy"
	@$(PY) -m pip install --quiet --upgrade pip
	@$(PY) -m pip install --quiet "setuptools>=77" "cython>=3.0,<4" "numpy>=2.0"
	@echo "[setup] installing streamcore and its dependencies (pyproject.toml)"
	@$(PY) -m pip install --quiet --no-build-isolation -e ".[dev]"
	@touch $@

# Rebuild the extension in place whenever a Cython source or the build script changes.
$(BUILT): $(STAMP) $(PYX) setup.py
	@echo "[setup] compiling the Cython core (src/streamcore/*.pyx)"
	@$(PY) setup.py --quiet build_ext --inplace
	@touch $@
	@echo "[setup] ready"

clean:
	rm -rf build src/streamcore/*.so src/streamcore/*.c src/streamcore/*.html $(BUILT)

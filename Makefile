# Two commands: `make demo` and `make test`. Both set up .venv themselves.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test

.PHONY: demo test lint install clean search-cluster examples wheel-check

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

$(TEST_STAMP): pyproject.toml $(STAMP)
	$(BIN)/pip install -q -e '.[test,litert,vela,nlp,peers]'
	touch $@

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/edgeslim demo --out runs/demo

# Every worked scenario in examples/ (a few minutes each on 2 cores; the litert extra for the C array, the
# minilm extra for the text search). A new example is one more examples/<name>.py with run() and check():
# it is picked up here and by the tests.
EXAMPLES_STAMP := $(VENV)/.installed-examples
$(EXAMPLES_STAMP): pyproject.toml $(TEST_STAMP)
	$(BIN)/pip install -q -e '.[test,litert,vela,nlp,peers,minilm]'
	touch $@

examples: $(EXAMPLES_STAMP)
	@set -e; for f in examples/[a-z]*.py; do n=$$(basename $$f .py); echo "== $$n"; \
	  $(BIN)/python -m examples.$$n --out runs/examples/$$n; done

test: $(TEST_STAMP)
	$(BIN)/python -m pytest -n 2 tests

# The package as a user installs it: wheel -> fresh virtualenv in a temp folder -> demo + run by name (CI runs it).
wheel-check:
	.ci/wheel-check

lint: $(TEST_STAMP)
	$(BIN)/ruff check edgeslim tests benchmarks examples
	$(BIN)/mypy edgeslim

clean:
	rm -rf $(VENV) runs .pytest_cache .mypy_cache .hypothesis

# A real local PostgreSQL server (Debian's package; started and stopped here) shared by two search workers.
search-cluster: $(TEST_STAMP)
	$(BIN)/python -m edgeslim.search.pgcluster demo --out runs/search-cluster

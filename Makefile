# Two commands on a fresh machine: `make sandbox` and `make test`. Both set themselves up.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: sandbox test lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

sandbox: $(STAMP)
	$(BIN)/mockservers serve --seed --tls $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/mypy
	$(BIN)/python -m pytest -q -n 2 $(ARGS)

# The performance figures (P1-P7, README "Benchmarks"): the quick size; ARGS="--size 100000" for the full one.
bench: $(STAMP)
	$(BIN)/python bench/compass.py $(ARGS)

clean:
	rm -rf $(VENV) .sandbox .pytest_cache .ruff_cache .hypothesis

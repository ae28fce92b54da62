# medlink: the two commands in the README are `make demo` and `make test`.
# Both create .venv and install medlink (editable, with test extras) first.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test bench clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

# install, then run the whole Prefect flow on the bundled sample delivery
demo: $(STAMP)
	$(BIN)/medlink run --config sample_data/delivery.yaml

# install, then run the test suite
test: $(STAMP)
	$(BIN)/pytest

bench: $(STAMP)
	$(BIN)/pip install --quiet -e ".[dev,bench]"
	$(BIN)/python bench/run_all.py

clean:
	rm -rf out .prefect .pytest_cache

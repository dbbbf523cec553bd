# Two commands set up and run everything on a fresh machine: `make train` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install train test test-all lint clean-outputs

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

train: install  ## the default experiment: 2-D mixture of Gaussians, about a minute on 2 CPU cores
	$(BIN)/rtkrun train $(ARGS)

test: install  ## the default (fast) test suite
	$(BIN)/pytest -q

test-all: install  ## including the slow tests
	$(BIN)/pytest -q -m 'not gpu'

lint: install
	$(BIN)/ruff check rtkrun tests scripts
	$(BIN)/ruff format --check rtkrun tests scripts

clean-outputs:
	find outputs -mindepth 1 ! -name README.md -exec rm -rf {} +

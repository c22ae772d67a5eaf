# The two commands of the README: `make demo` (the main job) and `make test` (the suite).
# Each sets itself up on a fresh machine: a virtual environment, PyTorch, then this package.
#
# TORCH picks the PyTorch build. The default pins the CPU build that this project's machines
# carry; on a GPU machine pass your CUDA build, e.g.
#   make test TORCH="torch --index-url https://download.pytorch.org/whl/cu124"
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test test-all lint bench clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $(STAMP)

# Train the default 2-D model (8gaussians), write its run folder with plots, then evaluate it.
demo: $(STAMP)
	@d=runs/demo-$$(date +%Y%m%d-%H%M%S); \
	$(BIN)/iresnet train toy-8gaussians --out $$d && $(BIN)/iresnet evaluate $$d

# The whole default test suite (slow statistical tests are in test-all).
test: $(STAMP)
	$(BIN)/python -m pytest -q

# Nightly-style: everything, slow tests included.
test-all: $(STAMP)
	$(BIN)/python -m pytest -q -m "slow or not slow"

lint: $(STAMP)
	$(BIN)/python -m pip install -q ruff
	$(BIN)/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache

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
DOCS_STAMP := $(VENV)/.docs-stamp

.PHONY: demo test lint docs clean

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

# The whole test suite, the docstring examples of src/ included (two worker processes).
test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2

# Style (ruff), formatting, and the import contract (the library never imports the app).
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

# The API reference from the docstrings (MkDocs + mkdocstrings), warnings as errors.
$(DOCS_STAMP): $(STAMP)
	$(BIN)/python -m pip install -q -e ".[docs]"
	touch $(DOCS_STAMP)

# NO_MKDOCS_2_WARNING silences mkdocs-material's end-of-life banner (not a warning of ours).
docs: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

clean:
	rm -rf $(VENV) build site *.egg-info .pytest_cache

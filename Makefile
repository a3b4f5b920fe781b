# vecrag: `make demo` and `make test` do all the set-up on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# CPU wheel for this machine; pyproject.toml stays permissive (torch>=2.4) for real users.
TORCH_PIN ?= torch==2.13.0
CORPUS ?= ../shared/data/enwiki2015/part-01.jsonl.xz
ARTICLES ?= 150
DEMO_OUT ?= demo_out
export OMP_WAIT_POLICY := PASSIVE
export HF_HUB_OFFLINE := 1

.PHONY: demo test venv lint clean

# One resolver run for torch and the project (the CPU wheel pinned; if that pin cannot be had, the CPU index),
# installed without byte-compiling, then compiled on every core at once (pip compiles its ~14k files one by one):
# 66 s -> 50 s on 2 cores with a warm pip cache. Compiling is kept: under PYTHONDONTWRITEBYTECODE an uncompiled
# venv recompiles torch and transformers in every command (13 s instead of 5 s to import them).
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q --no-compile "$(TORCH_PIN)" -e ".[test]" || { \
	  $(PIP) install -q --no-compile torch --index-url https://download.pytorch.org/whl/cpu && \
	  $(PIP) install -q --no-compile -e ".[test]"; }
	$(PY) -m compileall -q -j 0 "$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" \
	  >/dev/null 2>&1 || true
	touch $@

venv: $(VENV)/.installed

test: $(VENV)/.installed
	$(VENV)/bin/ruff check src tests benchmarks scripts
	@# the dashboard's browser test drives Debian's chromium (never a downloaded browser); it skips when absent
	test -x /usr/bin/chromium || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && apt-get update -qq && apt-get install -y -qq chromium >/dev/null; } || echo "note: /usr/bin/chromium missing; browser tests will skip (install: sudo apt-get install -y chromium)"
	$(PY) -m pytest -q --durations=15

demo: $(VENV)/.installed
	CORPUS="$(CORPUS)" ARTICLES="$(ARTICLES)" DEMO_OUT="$(DEMO_OUT)" VECRAG="$(VENV)/bin/vecrag" bash scripts/demo.sh

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check src tests benchmarks scripts

clean:
	rm -rf $(DEMO_OUT) .pytest_cache

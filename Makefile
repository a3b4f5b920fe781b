# vecrag: `make demo` and `make test` do all the set-up on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# CPU wheel for this machine; pyproject.toml stays permissive (torch>=2.4) for real users.
TORCH_PIN ?= torch==2.13.0
CORPUS ?= ../shared/data/enwiki2015/part-01.jsonl.xz
ARTICLES ?= 300
DEMO_OUT ?= demo_out
export OMP_WAIT_POLICY := PASSIVE
export HF_HUB_OFFLINE := 1

.PHONY: demo test venv lint clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH_PIN)" || $(PIP) install -q torch --index-url https://download.pytorch.org/whl/cpu
	$(PIP) install -q -e ".[test]"
	touch $@

venv: $(VENV)/.installed

test: $(VENV)/.installed
	$(VENV)/bin/ruff check src tests benchmarks
	@# the dashboard's browser test drives Debian's chromium (never a downloaded browser); it skips when absent
	test -x /usr/bin/chromium || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && apt-get update -qq && apt-get install -y -qq chromium >/dev/null; } || echo "note: /usr/bin/chromium missing; browser tests will skip (install: sudo apt-get install -y chromium)"
	$(PY) -m pytest -q --durations=15

demo: $(VENV)/.installed
	CORPUS="$(CORPUS)" ARTICLES="$(ARTICLES)" DEMO_OUT="$(DEMO_OUT)" VECRAG="$(VENV)/bin/vecrag" bash scripts/demo.sh

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check src tests benchmarks

clean:
	rm -rf $(DEMO_OUT) .pytest_cache

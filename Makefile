# Two commands for a fresh machine: `make demo` and `make test`.
PY      ?= python3
VENV    ?= .venv
VPY     := $(VENV)/bin/python
STAMP   := $(VENV)/.installed

.PHONY: demo test test-fast typecheck venv clean bench

$(STAMP): pyproject.toml
	test -x $(VPY) || $(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VPY) -m controlfoley demo --out outputs/demo

# static types first (mypy, configured in pyproject.toml: ~1 s warm, 15-60 s cold), then the suite
test: $(STAMP) typecheck
	$(VPY) -m pytest -q tests

typecheck: $(STAMP)
	$(VPY) -m mypy

test-fast: $(STAMP)
	$(VPY) -m pytest -q -m "not slow" tests

bench: $(STAMP)
	$(VPY) benchmarks/sample_speed.py --preset specmaskfoley_tiny

clean:
	rm -rf $(VENV) outputs .pytest_cache .hypothesis .mypy_cache

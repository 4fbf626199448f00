# Two commands do all the set-up: `make demo` and `make test`.
# Each creates .venv if it is absent and installs what it needs.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
PIP     = $(PY) -m pip
# torch is installed on its own first so that a CPU build is used where one is at hand
# (a bare `torch` requirement can pull a multi-GB CUDA build). Elsewhere set, e.g.,
#   TORCH_INDEX=https://download.pytorch.org/whl/cpu   (CPU wheels)
#   TORCH_INDEX=https://download.pytorch.org/whl/cu126 (a CUDA build)
TORCH_VERSION ?= 2.13.0
TORCH_INDEX   ?=
REPORTS ?= rnnprobe-reports

.PHONY: demo test install install-test bench clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

$(VENV)/.torch: $(VENV)/bin/python
	$(PY) -c "import torch" 2>/dev/null || \
	  $(PIP) install -q $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX) --extra-index-url https://pypi.org/simple) "torch==$(TORCH_VERSION)"
	touch $@

$(VENV)/.installed: $(VENV)/.torch pyproject.toml
	$(PIP) install -q -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.torch pyproject.toml
	$(PIP) install -q -e ".[test]"
	touch $@ $(VENV)/.installed

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

demo: $(VENV)/.installed
	PY=$(PY) REPORTS=$(REPORTS) sh scripts/demo.sh

# pytest exits 5 when it collects no tests: that is a failure here, not a pass.
test: $(VENV)/.installed-test
	$(PY) -m pytest -q -p no:cacheprovider tests; rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests" >&2; exit 1; fi; exit $$rc

bench: $(VENV)/.installed-test
	for b in bench/[!_]*.py; do $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) $(REPORTS) build *.egg-info

# The two commands of the README, plus a few for development.
#   make demo   install into .venv, then train a chat model on the built-in corpus (~10 min on 2 CPU cores)
#   make test   install into .venv (with test extras), then run the whole test suite
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# CPU build of torch; any torch>=2.4 works if you install your own (e.g. a CUDA build) first.
TORCH  ?= torch==2.13.0
STAMP  := $(VENV)/.installed

.PHONY: demo test test-fast install install-test bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/minimind demo

test: $(STAMP)
	$(PY) -m pytest -q

# everything except the end-to-end training tests (a couple of minutes)
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

bench: $(STAMP)
	$(PY) bench/train.py && $(PY) bench/decode.py && $(PY) bench/prepare.py

clean:
	rm -rf runs .pytest_cache build *.egg-info

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

# Tools some tests drive: headless Chromium (browser test), llama.cpp (GGUF check) and espeak-ng (the
# voice tests synthesise their speech with it). Best effort: without them those tests skip and say why.
TOOLS_STAMP := $(VENV)/.test-tools
$(TOOLS_STAMP): | $(STAMP)
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  { command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && \
	    (apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null) ; } || \
	  echo "note: chromium/chromedriver not installed; the browser test will skip"
	@command -v espeak-ng >/dev/null || \
	  { command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && \
	    (apt-get update -qq && apt-get install -y -qq espeak-ng >/dev/null) ; } || \
	  echo "note: espeak-ng not installed; the voice tests that need speech will skip"
	@$(PY) -c "import llama_cpp" 2>/dev/null || \
	  $(PY) -m pip install -q llama-cpp-python || \
	  echo "note: llama-cpp-python did not build; the llama.cpp comparison will skip"
	touch $(TOOLS_STAMP)

demo: $(STAMP)
	$(VENV)/bin/minimind demo

test: $(STAMP) $(TOOLS_STAMP)
	$(PY) -m pytest -q

# everything except the end-to-end training tests (a couple of minutes)
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

bench: $(STAMP)
	$(PY) bench/train.py && $(PY) bench/decode.py && $(PY) bench/prepare.py

clean:
	rm -rf runs .pytest_cache build *.egg-info

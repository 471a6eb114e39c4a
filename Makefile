# mmlens: `make demo` and `make test` set up .venv on first use, then run.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test test-slow setup browser clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch pinned: 2.13.0 is the CPU build on this machine's disk (a newer one pulls a multi-GB CUDA build)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	@touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(PY) -m mmlens.demo

# the web page's browser tests drive Debian's chromium (never `playwright install`: no browser downloads)
browser:
	@command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium) \
		|| echo "could not install chromium: run 'apt-get install chromium' as root for the browser tests"

test: $(STAMP) browser
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q

# the slow tests include a local Ray run: the `ray` extra is installed for them only (it is large)
test-slow: $(STAMP)
	$(PY) -c "import ray" 2>/dev/null || $(PY) -m pip install -q -e '.[ray]'
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -m slow

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info

# Both entry points create and use .venv themselves: `make demo`, `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
DEMO   ?= demo-output

.PHONY: demo test test-fast install s3-server clean

install: $(STAMP)

# torch is pinned and installed first: a CPU build is on disk, an unpinned one pulls CUDA.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -m pip check
	$(PY) -m ser_ray.warmup
	touch $(STAMP)

s3-server:
	bash tests/s3/install.sh

test: $(STAMP) s3-server
	$(PY) -m pytest -q -p no:cacheprovider --timeout=900 --durations=25

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow and not s3"

demo: $(STAMP)
	$(PY) -m ser_ray.demo --output $(DEMO)

clean:
	rm -rf $(VENV) $(DEMO) .pytest_cache

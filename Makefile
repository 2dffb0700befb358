# make run: the seed study on all 60,000 MNIST images, stored in aeknn.db, tables printed, then the API
# served at http://127.0.0.1:8000.
# make test: the test suite (needs the machine's PostgreSQL for the storage tests on PostgreSQL).
VENV ?= .venv
PY := $(VENV)/bin/python
# The real MNIST files beside a checkout of this project are used when present (no network needed).
export AEKNN_DATA_DIR ?= $(if $(wildcard ../shared/data/mnist),../shared/data,data)

.PHONY: run test install install-dev lint clean compose-test

$(VENV)/.installed: pyproject.toml setup.py common/compute/_l1.c common/compute/_select.c common/compute/_ranks.c common/compute/_embed.c
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

run: install
	$(VENV)/bin/aeknn run --split all
	$(VENV)/bin/aeknn serve

test: install-dev
	$(VENV)/bin/ruff check .
	$(PY) -m pytest

# The image built and the whole stack played for real under Docker (docker/compose_test.py): up, a study
# over HTTP, down and up again, a neighbours worker killed mid-job, down -v. Starts dockerd if needed.
compose-test:
	python3 docker/compose_test.py

lint: install-dev
	$(VENV)/bin/ruff check .

clean:
	rm -rf .aeknn-cache build *.egg-info

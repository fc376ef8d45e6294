# Two commands do everything on a fresh machine with Python 3.10+:
#   make demo   set up, then train ResNet-20 and Plain-20 on the embedded digits and compare them
#   make test   set up, then run the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup demo test bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

demo: setup
	$(BIN)/reslab demo

test: setup
	$(BIN)/python -m pytest -n 2 --durations=10

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache

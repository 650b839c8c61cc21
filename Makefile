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

.PHONY: help install train test test-e2e test-full test-slow bench gpu-check test-slurm slurm-up slurm-down fig2-mnist fig2-frey fig3 fig4 fig5 fig4-figures fig5-figures figures clean

.DEFAULT_GOAL := install
help:  ## list the targets, one line each
	@awk -F ':.*## ' '/^[a-z0-9-]+:.*## / {printf "  %-13s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

install: $(VENV)/.installed  ## create .venv and install aevb (editable, with tests and TensorBoard)

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

# AEVB_STARTED_BY: an interrupted run prints its resume command as "make train ARGS=..."
train: install  ## train the paper's MNIST model (N_z = 20, 10^6 samples); ARGS="..." for overrides
	AEVB_STARTED_BY="make train" $(BIN)/aevb-train $(ARGS)

test: install  ## run the tests (not the slow ones, not the longest end-to-end sweeps)
	$(BIN)/python -m pytest -m "not slow and not e2e" --durations=30 $(ARGS)

test-e2e: install  ## the longest end-to-end sweeps (packed sweeps against single runs, the CPU gpu-check)
	$(BIN)/python -m pytest -m "e2e" --durations=10 $(ARGS)

test-full: install  ## every test but the slow ones (make test and make test-e2e together)
	$(BIN)/python -m pytest -m "not slow" $(ARGS)

test-slow: install  ## run the slow 10^6-sample fidelity tests
	$(BIN)/python -m pytest -m slow $(ARGS)

# --- a single-node SLURM on this Debian machine (root): README "Running on a SLURM cluster" ----
slurm-up:  ## install (apt) and start a single-node SLURM, wait until the node is idle
	bash scripts/slurm_up.sh
slurm-down:  ## stop that SLURM by its daemons' PIDs
	bash scripts/slurm_down.sh
test-slurm: install  ## the tests against a real single-node SLURM (starts it)
	AEVB_SLURM_TESTS=1 $(BIN)/python -m pytest tests/test_slurm.py -rs $(ARGS)

# --- the paper's experiments: each trains its sweep, then draws its figure (scripts/*.sh) ---
export BIN SWEEPS FIGURES SAMPLES LAUNCHER TRAINER

fig2-mnist: install  ## Figure 2, MNIST: AEVB vs wake-sleep sweep, then the figure (SAMPLES=, LAUNCHER=, TRAINER=)
	scripts/fig2.sh mnist $(ARGS)

fig2-frey: install  ## Figure 2, Frey Face: AEVB vs wake-sleep sweep, then the figure
	scripts/fig2.sh frey $(ARGS)

fig3: install  ## Figure 3: log p(x) against samples, 1000 and 50000 training images
	scripts/fig3.sh $(ARGS)

fig4: install  ## Figure 4: N_z = 2 runs on MNIST and Frey Face, then the learned manifolds
	scripts/fig4.sh $(ARGS)

fig5: install  ## Figure 5: N_z in {2, 5, 10, 20} on MNIST, then samples and reconstructions
	scripts/fig5.sh $(ARGS)

# --- figures only, from runs that exist -----------------------------------------------------
fig4-figures:  ## Figure 4 from existing runs, no training
	scripts/fig4-figures.sh

fig5-figures:  ## Figure 5 from existing runs, no training
	scripts/fig5-figures.sh

figures: install  ## every figure from existing runs, no training
	scripts/figures.sh

clean:  ## remove logs/ and the pytest cache
	rm -rf logs .pytest_cache

# --- speed: samples/s and peak memory of aevb's loops against plain loops (scripts/bench.py) ---------------
bench: install  ## samples/s and peak memory: plain loop, naive Lightning, aevb standard and fast (scripts/bench.py)
	$(BIN)/python scripts/bench.py $(ARGS)

# --- a machine with one GPU and no network: tests, loops, packs, a Figure 2 slice in one report (scripts/gpu_check.sh) ---
gpu-check:  ## on a bare 1-GPU machine: install from AEVB_WHEELS, GPU tests, bench, packs, Figure 2 slice -> report (ARGS="OUT_DIR"; ARGS="--dry-run OUT_DIR" on a CPU)
	bash scripts/gpu_check.sh $(ARGS)

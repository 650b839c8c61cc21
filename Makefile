# aevb: `make train` trains the paper's MNIST model, `make test` runs the tests.
# Both create .venv and install the package (editable) on first use.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
ARGS   ?=
# Experiment knobs: SAMPLES = training samples evaluated per run (default: the experiment's,
# paper scale 10^8 for Figure 2); LAUNCHER = a hydra/launcher option (local_parallel, slurm,
# submitit_local, ...); TRAINER = cpu | gpu (| ddp with LAUNCHER=slurm only: a local sweep cannot
# host DDP ranks, which Lightning starts by re-running the command line).
SAMPLES  ?=
LAUNCHER ?=
TRAINER  ?=
SWEEPS   ?= logs/sweeps
FIGURES  ?= logs/figures
KNOBS = $(if $(SAMPLES),max_samples=$(SAMPLES)) $(if $(LAUNCHER),hydra/launcher=$(LAUNCHER)) $(if $(TRAINER),trainer=$(TRAINER))

# Use ../shared/data as the offline mirror when it is there and nothing else is set.
ifneq ($(wildcard ../shared/data/mnist),)
export AEVB_DATA_MIRROR ?= $(abspath ../shared/data)
endif

.PHONY: install train test test-slow test-slurm slurm-up slurm-down fig2-mnist fig2-frey fig3 fig4 fig5 figures clean

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

# --- a single-node SLURM on this Debian machine (root): README "Running on a SLURM cluster" ----
slurm-up:
	bash scripts/slurm_up.sh
slurm-down:
	bash scripts/slurm_down.sh
test-slurm: install
	AEVB_SLURM_TESTS=1 $(BIN)/python -m pytest tests/test_slurm.py -rs $(ARGS)

# --- the paper's experiments: each trains its sweep, then draws its figure -----------------
fig2-mnist: install
	$(BIN)/aevb-train -m experiment=fig2_mnist hydra.sweep.dir=$(SWEEPS)/fig2_mnist $(KNOBS) $(ARGS)
	$(BIN)/aevb-figures fig2 $(SWEEPS)/fig2_mnist --out $(FIGURES)

fig2-frey: install
	$(BIN)/aevb-train -m experiment=fig2_frey hydra.sweep.dir=$(SWEEPS)/fig2_frey $(KNOBS) $(ARGS)
	$(BIN)/aevb-figures fig2 $(SWEEPS)/fig2_frey --out $(FIGURES)

fig3: install
	$(BIN)/aevb-train -m experiment=fig3_mnist hydra.sweep.dir=$(SWEEPS)/fig3_mnist $(KNOBS) $(ARGS)
	$(BIN)/aevb-figures fig3 $(SWEEPS)/fig3_mnist --out $(FIGURES)

fig4: install
	$(BIN)/aevb-train -m experiment=fig45_mnist model.latent_dim=2 hydra.sweep.dir=$(SWEEPS)/fig4_mnist $(KNOBS) $(ARGS)
	$(BIN)/aevb-train experiment=fig4_frey hydra.run.dir=$(SWEEPS)/fig4_frey $(filter-out hydra/launcher=%,$(KNOBS)) $(ARGS)
	$(MAKE) --no-print-directory fig4-figures

fig5: install
	$(BIN)/aevb-train -m experiment=fig45_mnist hydra.sweep.dir=$(SWEEPS)/fig5_mnist $(KNOBS) $(ARGS)
	$(MAKE) --no-print-directory fig5-figures

# --- figures only, from runs that exist -----------------------------------------------------
fig4-figures:
	mkdir -p $(FIGURES)
	$(BIN)/aevb-figures manifold $(SWEEPS)/fig4_mnist/0 --out $(FIGURES)/fig4_mnist_manifold.png
	$(BIN)/aevb-figures manifold $(SWEEPS)/fig4_frey --out $(FIGURES)/fig4_frey_manifold.png

fig5-figures:
	mkdir -p $(FIGURES)
	$(BIN)/aevb-figures fig5 $(sort $(wildcard $(SWEEPS)/fig5_mnist/[0-9]*)) --out $(FIGURES)/fig5_mnist.png
	$(BIN)/aevb-figures reconstructions $(SWEEPS)/fig5_mnist/3 --out $(FIGURES)/reconstructions_mnist.png

figures: install
	@for s in fig2_mnist fig2_frey; do \
	  if [ -d $(SWEEPS)/$$s ]; then $(BIN)/aevb-figures fig2 $(SWEEPS)/$$s --out $(FIGURES) || exit 1; \
	  else echo "skip $$s: no runs in $(SWEEPS)/$$s"; fi; done
	@if [ -d $(SWEEPS)/fig3_mnist ]; then $(BIN)/aevb-figures fig3 $(SWEEPS)/fig3_mnist --out $(FIGURES); \
	  else echo "skip fig3: no runs in $(SWEEPS)/fig3_mnist"; fi
	@if [ -d $(SWEEPS)/fig4_mnist ] && [ -d $(SWEEPS)/fig4_frey ]; then $(MAKE) --no-print-directory fig4-figures; \
	  else echo "skip fig4: no runs in $(SWEEPS)/fig4_mnist and $(SWEEPS)/fig4_frey"; fi
	@if [ -d $(SWEEPS)/fig5_mnist ]; then $(MAKE) --no-print-directory fig5-figures; \
	  else echo "skip fig5: no runs in $(SWEEPS)/fig5_mnist"; fi

clean:
	rm -rf logs .pytest_cache

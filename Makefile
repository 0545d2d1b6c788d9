# Two commands after cloning: `make table1` (the DLP paper's Table 1 on the configured models) and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# CUDA users: make install TORCH_INDEX=https://download.pytorch.org/whl/cu128
TORCH_INDEX ?=
# A local data folder with wikitext-2-raw/wiki.test.raw, used when present; never required. Absolute, so that
# commands run from another folder (a test's copy of the repository) find the same one.
DLP_DATA_DIR ?= $(abspath $(wildcard ../shared/data))
export DLP_DATA_DIR

# Models (conf/model) and preset for the tables: make table1 MODELS=llama2-7b,mistral-7b PRESET=paper
MODELS ?= smollm2-135m
comma := ,
FIRST_MODEL = $(firstword $(subst $(comma), ,$(MODELS)))
PRESET ?= cpu
# Calibration seeds, each cell run once per seed: make table1 SEEDS=0,1,2 (tables default to one seed, the
# ablation and the curves to three).
SEEDS ?=
# Run the missing cells of a table as one Hydra multirun through a launcher (conf/hydra/launcher/ or Hydra's own):
# make table1 LAUNCHER=joblib, or LAUNCHER=slurm OVERRIDES="hydra.launcher.partition=gpu hydra.launcher.timeout_min=600".
# Default: one after another in this process. OVERRIDES also takes config overrides for every cell.
LAUNCHER ?=
OVERRIDES ?=
GRID_OPTIONS = $(if $(LAUNCHER),--launcher $(LAUNCHER)) $(OVERRIDES)
# A peek at a grid whose cells run elsewhere: make table1 SEEDS=0,1,2 FINISHED_ONLY=1 (or table2, ablation, curves,
# recovery) renders the finished records and runs nothing (the other cells read "not run";
# results/table1-3seeds.partial.md).
FINISHED_ONLY ?=
TABLE_OPTIONS = $(GRID_OPTIONS) $(if $(FINISHED_ONLY),--finished-only)

.PHONY: install run table1 table2 ablation curves recovery plots bench bench-gpu test test-fast clean-cache

$(VENV)/.installed: pyproject.toml assets/wheels.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0 $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PY) -m pip install --quiet -e '.[dev]'
	$(PY) -m dlp.storage.assets
	$(PY) -m dlp.evaluation.tasks.offline_data
	$(PY) -c "from dlp.storage.embedded import converted_folder; print('embedded model:', converted_folder())"
	touch $@

install: $(VENV)/.installed

run: install
	$(PY) -m experiments.run model=smollm2-135m criterion=wanda allocation=uniform sparsity=0.5 preset=cpu

table1: install
	$(PY) -m experiments.tables table1 --models $(MODELS) --preset $(PRESET) --seeds $(or $(SEEDS),0) $(TABLE_OPTIONS)

table2: install
	$(PY) -m experiments.tables table2 --models $(MODELS) --preset $(PRESET) --seeds $(or $(SEEDS),0) $(TABLE_OPTIONS)

# Ranking or spread? Controls at DLP's spread and the searched allocations, per criterion, at 60% and 70%
# (conf/experiment/ablation.yaml).
ablation: install
	$(PY) -m experiments.ablation --model $(FIRST_MODEL) --preset $(PRESET) --seeds $(or $(SEEDS),0$(comma)1$(comma)2) $(TABLE_OPTIONS)

# LoRA recovery under the mask: uniform, OWL and DLP before and after, every pruned weight still zero.
recovery: install
	$(PY) -m experiments.recovery_table --model $(FIRST_MODEL) --preset $(PRESET) $(if $(SEEDS),--seeds $(SEEDS)) $(TABLE_OPTIONS)

# Perplexity against sparsity (30% to 80%) for uniform, OWL, DLP and the linear ramp, ATP and EvoPress at 60% and
# 70%, with seed error bars.
curves: install
	$(PY) -m experiments.curves --model $(FIRST_MODEL) --preset $(PRESET) --seeds $(or $(SEEDS),0$(comma)1$(comma)2) $(TABLE_OPTIONS)

# Block scores and sparsities at Wanda 70%, seed 0; the searches only when named (their records are Table 1's):
# make plots ALLOCATIONS=uniform,owl,dlp,alphapruning,atp,evopress (results/figures/).
ALLOCATIONS ?=
plots: install
	$(PY) -m experiments.plots --model $(FIRST_MODEL) --preset $(PRESET) $(if $(ALLOCATIONS),--allocations $(ALLOCATIONS))

# Speed and memory against this machine's matmul peak (results/bench.md); see experiments/bench/.
bench: install
	$(PY) -m experiments.bench $(BENCH_ARGS)
	$(PY) -m experiments.bench.sparse24 --out results/bench-sparse24

# The same on a GPU: a LLaMA-2-7B-shaped model with random weights, bf16, 128 x 2048 calibration.
bench-gpu: install
	$(PY) -m experiments.bench --shape llama2-7b --dtypes bfloat16 --device cuda --nsamples 128 --seqlen 2048 \
		--eval-windows 32 --eval-seqlen 2048 --out results/bench-llama2-7b-gpu $(BENCH_ARGS)
	$(PY) -m experiments.bench.sparse24 --whole-model --out results/gpu/bench-sparse24

# Every test; the 15 slowest are named at the end (where the CI time goes).
test: install
	$(PY) -m pytest -q --durations=15

# Every code path on tiny models in a few minutes: no end-to-end run of the embedded model, no whole sweeps.
test-fast: install
	$(PY) -m pytest -q -m "not e2e and not slow"

clean-cache:
	rm -rf .cache

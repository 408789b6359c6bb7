"""One MRC training run: `python -m experiments.train CONFIG.yaml [CONFIG.yaml ...] [key=value ...]`

Reads top to bottom like the run itself: config → model and data (bad input fails here, before anything is written)
→ run directory (resume if a checkpoint is there) → windows of k micro-batches through `sam.train_step` → evaluation
at every epoch end and at the end → summary. With no arguments at all it runs nothing and shows how to start.

Ctrl-C (SIGINT), SIGTERM (what a cluster scheduler or the sweep runner sends) and SIGHUP end the run the same way:
summary.json says failed with the reason "interrupted by SIGTERM at update N of M" and whether a rerun of the same
command resumes (from the last resume checkpoint: train.checkpoint_every / train.checkpoint_every_minutes) or starts
over. Exit codes: 0 completed (or already complete), 1 failed, 2 bad input, 3 diverged, 128 + the signal's number when
interrupted (130 Ctrl-C, 143 SIGTERM, 129 SIGHUP).

Data-parallel over N processes: `torchrun --standalone --nproc_per_node=N -m experiments.train ...` (the same
arguments); experiments/distributed.py says what each rank does.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import statistics
import sys
import threading
import traceback
from contextlib import contextmanager
from pathlib import Path

from .allocator import keep_large_blocks_on_heap
from .checkpoint import load_resume_state, remove_resume_state, resume_point
from .config import ConfigError, load_config, split_args
from .distributed import NullTracker
from .distributed import setup as setup_distributed
from .model import ModelError, count_parameters
from .network import PROBE_TIMEOUT_S, reachable, wandb_url
from .qa_eval import metric_keys
from .rundir import (
    COMPLETED,
    CONFLICT,
    DIVERGED,
    DONE_STATUSES,
    EXIT_BAD_INPUT,
    EXIT_DIVERGED,
    EXIT_FAILED,
    EXIT_OK,
    FAILED,
    checkpoint_dir,
    model_input_record,
    run_state,
    signal_exit_code,
)
from .rundir import run_dir as run_dir_of
from .schema import EMBEDDED_MODEL, TINY_MODEL
from .tracking import RunTracker, TrackingError, signal_of

log = logging.getLogger("experiments.train")


STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))


class Interrupted(KeyboardInterrupt):
    """A stop signal turned into an exception, so SIGTERM and SIGHUP end a run through the same path as Ctrl-C."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextmanager
def _stop_signals_handled_by(handler):
    """While inside: SIGINT, SIGTERM and SIGHUP go to `handler` in the main thread (a signal the process ignores, as
    under nohup, stays ignored). The previous handlers come back on exit."""
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in STOP_SIGNALS:
            if signal.getsignal(sig) is not signal.SIG_IGN:
                previous[sig] = signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old if old is not None else signal.SIG_DFL)


@contextmanager
def stop_signals_raise():
    """While inside: a stop signal raises Interrupted in the main thread."""

    def handler(signum, _frame):
        raise Interrupted(signum)

    with _stop_signals_handled_by(handler):
        yield


@contextmanager
def stop_signals_deferred():
    """While inside: a stop signal is noted, not raised, so the ending being recorded (error.log, summary.json) is
    written whole. Used around every ending: torchrun sends SIGTERM to each rank when one fails, often while this
    rank is recording the failure it saw itself (the dead peer's closed connection), and an Interrupted raised in
    the middle left summary.json saying `running`. The run is ending anyway, so a noted signal changes nothing but
    the line printed; SIGKILL (torchrun's, 30 s later) still ends a stuck ending."""
    noted: list[int] = []
    with _stop_signals_handled_by(lambda signum, _frame: noted.append(signum)):
        yield noted
    if noted:
        name = signal.Signals(noted[0]).name
        print(f"{name} received while the run's ending was being recorded: recorded it first", file=sys.stderr)


def _offline_defaults(cfg) -> None:
    """The embedded default needs no hub: make hub look-ups fail in a second instead of hanging on retries."""

    local_model = cfg.model.name_or_path in (EMBEDDED_MODEL, TINY_MODEL) or Path(cfg.model.name_or_path).is_dir()
    if local_model and cfg.data.source != "hub":
        for key in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
            os.environ.setdefault(key, "1")
    os.environ.setdefault("WANDB_ERROR_REPORTING", "false")
    os.environ.setdefault("WANDB_SILENT", "true")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


# ----------------------------------------------------------------------------------------------------------------------
# entry point


def prepare_run_dir(cfg, run_dir: Path) -> str:
    """Decide what to do with an existing run directory: 'new', 'resume', 'restart', 'completed' or 'diverged'
    (experiments.rundir.run_state has the table).

    A directory that holds a different config is refused (ValueError); a completed run is never rerun.
    """
    state = run_state(cfg, run_dir)
    if state.decision == CONFLICT and state.changed_input:
        raise ValueError(
            f"{state.changed_input}: run directory {run_dir} holds the result of the old input; delete it to "
            "train on the new one (or set run_name=... to keep both)"
        )
    if state.decision == CONFLICT:
        raise ValueError(
            f"run directory {run_dir} holds a different config (hash {state.stored_hash} != {state.own_hash}); "
            f"set run_name=... or results_dir=... to run this one elsewhere"
        )
    return state.decision


NO_ARGUMENTS = """usage: python -m experiments.train CONFIG.yaml [CONFIG.yaml ...] [key=value ...]
No arguments: nothing is run (the bare default is a full run of several minutes). For example:
  python -m experiments.train configs/smoke.yaml configs/arm/sam_full.yaml        a tiny run, about 10 s
  python -m experiments.train configs/default.yaml configs/arm/adamw.yaml         the embedded default (make run)
--help explains the arguments; README.md says what each run takes."""


def _interrupted(err: BaseException, trainer, tracker, run_dir: Path) -> int:
    """Record a run stopped by a signal: failed, with a reason that says where and whether a rerun resumes."""

    name, signum = signal_of(err)
    if tracker.finished:  # the signal came after the summary was final (e.g. while the resume state was removed)
        print(f"interrupted ({name}) after the run ended {tracker.summary['status']}: {run_dir}", file=sys.stderr)
        return signal_exit_code(signum)
    p, t = trainer.progress, trainer.cfg.train
    resumable = resume_point(run_dir)
    where = f"at update {p.update} of {trainer.total_updates}"
    if resumable is not None:
        outcome, advice = f"resumable from update {resumable}", "rerun the same command to resume"
    else:
        outcome = "not resumable (no resume checkpoint yet)"
        every = ", ".join(
            f"{k}={v}"
            for k, v in (
                ("train.checkpoint_every", t.checkpoint_every),
                ("train.checkpoint_every_minutes", t.checkpoint_every_minutes),
            )
        )
        advice = f"a rerun starts over; {every}: set train.checkpoint_every=N (updates) to make it resumable sooner"
    reason = f"interrupted by {name} {where}; {outcome}"
    tracker.write_text("error.log", traceback.format_exc())
    tracker.finish(
        FAILED,
        reason=reason,
        updates=p.update,
        final=trainer.final_block(),
        best=p.best,
        interrupted={"signal": name, "update": p.update, "resumable_from": resumable},
    )
    print(f"interrupted ({name}) {where}: {outcome}; {advice} ({run_dir})", file=sys.stderr)
    return signal_exit_code(signum)


def _diverged(err: BaseException, trainer, tracker, run_dir: Path, ctx) -> int:
    """Record a run whose loss went non-finite: final, never resumed."""
    p = trainer.progress
    wall = tracker.elapsed()
    tracker.finish(
        DIVERGED,
        reason=str(err),
        final=trainer.final_block(),
        best=p.best,
        updates=p.update,
        **trainer.update_counts(),
        examples=p.examples,
        diverged_at=p.update,
        wall_time_s=round(wall, 3),
        time=trainer.time_summary(wall),
    )
    if ctx.is_main:
        remove_resume_state(run_dir)  # a diverged run is final: never resumed
    print(f"diverged: {err} ({run_dir})", file=sys.stderr)
    return EXIT_DIVERGED


def _failed(err: BaseException, trainer, tracker, run_dir: Path) -> int:
    """Record a run ended by an exception: error.log with its traceback, summary.json failed with a one-line reason."""
    tracker.write_text("error.log", "".join(traceback.format_exception(type(err), err, err.__traceback__)))
    reason = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
    tracker.finish(FAILED, reason=reason, updates=trainer.progress.update)
    print(f"failed: {reason} (traceback in {run_dir / 'error.log'})", file=sys.stderr)
    return EXIT_FAILED


def main(argv: list[str] | None = None) -> int:

    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        return EXIT_OK
    if not argv:
        print(NO_ARGUMENTS, file=sys.stderr)
        return EXIT_BAD_INPUT
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    keep_large_blocks_on_heap()  # before the model exists: its gradients are the large blocks
    files, overrides = split_args(argv)
    notes: list = []
    try:
        cfg = load_config(files, overrides, notes=notes)
        ctx = setup_distributed(cfg)  # under torchrun: dist.world_size from it, then join the process group
    except (ConfigError, ValueError) as err:
        print(f"config error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if not ctx.is_main:  # data-parallel: rank 0 speaks for the run; the others report only what goes wrong
        logging.getLogger().setLevel(logging.WARNING)
    for note in notes if ctx.is_main else ():  # which setting wins where two disagree, settings with no effect here
        print(note, file=sys.stderr)
    _offline_defaults(cfg)
    try:
        return _start(cfg, ctx)
    finally:
        ctx.close()


def _start(cfg, ctx) -> int:
    """What to do with the run directory (rank 0 decides and tells the other ranks), then the run, with Ctrl-C,
    SIGTERM and SIGHUP ending it honestly (stop_signals_raise)."""
    run_dir = run_dir_of(cfg)
    decided = None
    if ctx.is_main:  # before anyone writes
        try:
            decided = prepare_run_dir(cfg, run_dir)
        except ValueError as err:
            decided = ("error", str(err))
        if decided not in DONE_STATUSES and cfg.tracking.mode == "online":
            # before minutes of model and data loading, not after

            if not reachable(wandb_url()):
                decided = (
                    "error",
                    f"tracking.mode=online but the W&B server {wandb_url()} is not reachable within "
                    f"{PROBE_TIMEOUT_S:.0f} s; use tracking.mode=offline (upload later with make "
                    "sync) or set WANDB_BASE_URL",
                )
    decided = ctx.broadcast(decided)
    if isinstance(decided, tuple):
        if ctx.is_main:
            print(f"error: {decided[1]}", file=sys.stderr)
        return EXIT_BAD_INPUT
    action = decided
    if action in DONE_STATUSES:
        if ctx.is_main:
            print(f"already {action}: {run_dir} (delete it to run again)", file=sys.stderr)
        return EXIT_OK if action == COMPLETED else EXIT_DIVERGED
    touched: list = []  # _run appends (trainer, tracker) once the run directory holds a summary.json of this attempt
    with stop_signals_raise():
        try:
            return _run(cfg, ctx, run_dir, action, touched)
        except KeyboardInterrupt as err:
            name, signum = signal_of(err)
            if touched and not touched[0][1].finished:
                # the signal came in the few bytecodes between an exception (e.g. a dead peer's closed connection)
                # and the deferred block that records it: record that exception, else the signal, now
                from .trainer import Diverged

                trainer, tracker = touched[0]
                cause = err.__context__
                with stop_signals_deferred():
                    if isinstance(cause, Exception):
                        print(
                            f"{name} arrived while the run's ending was starting; recording it first", file=sys.stderr
                        )
                    if isinstance(cause, Diverged):
                        return _diverged(cause, trainer, tracker, run_dir, ctx)
                    if isinstance(cause, Exception):
                        return _failed(cause, trainer, tracker, run_dir)
                    return _interrupted(err, trainer, tracker, run_dir)
            if touched:  # a signal after the run's ending was recorded (summary.json is final)
                print(
                    f"interrupted ({name}) while the run was ending; summary.json has its status ({run_dir})",
                    file=sys.stderr,
                )
            else:  # model and data loading: the run directory was not touched
                print(
                    f"interrupted ({name}) during start-up, before anything was written to {run_dir}", file=sys.stderr
                )
            return signal_exit_code(signum)


def _run(cfg, ctx, run_dir: Path, action: str, touched: list) -> int:
    # Here, not at the top: these import datasets and huggingface_hub, which read HF_*_OFFLINE once, when first
    # imported; main() sets those defaults for the embedded model first (tests/test_cli.py checks the order).
    from .data import DataError, describe_data
    from .trainer import Diverged, Trainer

    try:
        trainer = Trainer(cfg, run_dir, ctx)  # model and data: bad input fails here, before the run dir is touched
    except (DataError, ModelError, ValueError) as err:
        print(f"error: {str(err).splitlines()[0]}", file=sys.stderr)
        return EXIT_BAD_INPUT

    resume = False
    if action == "resume":
        resume = load_resume_state(trainer)
        if len(set(ctx.all_gather(resume))) > 1:
            print(f"error: the ranks could not all read the resume checkpoint in {run_dir}", file=sys.stderr)
            return EXIT_FAILED
        if not resume:
            log.warning("resume checkpoint unusable; starting %s over", run_dir)
    if not resume and action == "restart" and ctx.is_main:
        shutil.rmtree(checkpoint_dir(run_dir, ""), ignore_errors=True)
    try:
        # RunTracker writes summary.json (running) first; a signal or error while it starts W&B is recorded there
        if ctx.is_main:
            tracker = RunTracker(cfg, run_dir, resume=resume, device=trainer.device)
        else:
            tracker = NullTracker(ctx.rank)
    except TrackingError as err:
        print(f"failed: {err} ({run_dir})", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt as err:
        name, signum = signal_of(err)
        print(f"interrupted ({name}) during start-up (starting W&B); summary.json says so ({run_dir})", file=sys.stderr)
        return signal_exit_code(signum)
    touched.append((trainer, tracker))
    try:
        if resume:
            tracker.rewind(trainer.progress.update)

        tracker.update_summary(
            data=trainer.data_stats,
            parameters=count_parameters(trainer.model),
            total_updates=trainer.total_updates,
            **({"model_input": model_input} if (model_input := model_input_record(cfg)) else {}),
            optimizer={"fused_adamw": bool(trainer.optimizer.param_groups[0].get("fused"))},
            **({"dist": ctx.describe()} if ctx.enabled else {}),
        )
        if ctx.is_main:
            print(describe_data(trainer.data_stats), file=sys.stderr)
            where = f"resuming at update {trainer.progress.update}" if resume else "starting"
            ranks = f", {ctx.world_size} processes ({ctx.backend})" if ctx.enabled else ""
            print(
                f"{where}: {run_dir} ({trainer.total_updates} updates, {trainer.data_stats['train_features']} "
                f"train features, device {trainer.device}{ranks})",
                file=sys.stderr,
            )
        trainer.run(tracker)
        with stop_signals_deferred():
            p = trainer.progress
            wall = tracker.elapsed()
            summary = tracker.finish(
                COMPLETED,
                final=trainer.final_block(),
                best=p.best,
                updates=p.update,
                **trainer.update_counts(),
                examples=p.examples,
                mean_step_time_s=round(p.step_time_total / max(1, p.update), 4),
                median_step_time_s=round(statistics.median(p.step_times), 4) if p.step_times else None,
                wall_time_s=round(wall, 3),
                time=trainer.time_summary(wall),
            )
        if ctx.is_main:
            remove_resume_state(run_dir)  # a completed run is never resumed; the checkpoint is the model + optimizer
    except Diverged as err:  # each ending is recorded with stop signals deferred (stop_signals_deferred)
        with stop_signals_deferred():
            return _diverged(err, trainer, tracker, run_dir, ctx)
    except KeyboardInterrupt as err:  # Ctrl-C, SIGTERM (also torchrun stopping the ranks after one failed), SIGHUP
        with stop_signals_deferred():
            return _interrupted(err, trainer, tracker, run_dir)
    except Exception as err:  # noqa: BLE001 - recorded, then reported as one line
        with stop_signals_deferred():
            return _failed(err, trainer, tracker, run_dir)
    if not ctx.is_main:
        return EXIT_OK
    f = summary.get("final", {})
    em_key, second = metric_keys(cfg.data.metric)
    split = "".join(f"  {k} {f[k]:.2f}" for k in (f"dev/has_ans_{second[4:]}", f"dev/no_ans_{second[4:]}") if k in f)
    print(
        f"completed: {run_dir}\n  {second} {f.get(second, float('nan')):.2f}  dev/em {f.get(em_key, float('nan')):.2f}"
        f"{split}  dev/loss {f.get('dev/loss', float('nan')):.4f}  train/loss {f.get('train/loss', float('nan')):.4f}"
        f"  updates {p.update}  wall {summary.get('wall_time_s', 0):.0f}s",
        file=sys.stderr,
    )
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())

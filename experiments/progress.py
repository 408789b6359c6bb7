"""Where training stands (`Progress`, saved in resume checkpoints) and how it is shown (`console`, `ProgressBar`)."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field

from tqdm import tqdm


@dataclass
class Progress:
    """Where training stands; saved in resume checkpoints."""

    update: int = 0  # windows trained (applied and skipped updates alike; train.max_updates caps this count)
    skipped_updates: int = 0  # of those, fp16 updates GradScaler skipped (inf/NaN gradient): weights and lr unchanged
    epoch: int = 0  # the epoch in progress
    window: int = 0  # next window index inside `epoch`
    examples: int = 0  # training examples (questions) reached: each counts once per epoch, see window_examples
    step_time_total: float = 0.0
    step_times: list = field(default_factory=list)  # per update (the median ignores warm-up outliers)
    best: dict | None = None
    last_eval: dict | None = None
    last_train: dict = field(default_factory=dict)
    # wall seconds spent outside the training steps, kept across resumes (summary.json "time")
    eval_time: float = 0.0
    diagnostic_time: float = 0.0
    checkpoint_time: float = 0.0
    evaluations: int = 0


def console(line: str) -> None:
    """One line on stderr that does not tear a progress bar drawn on a terminal (tqdm.write)."""
    tqdm.write(line, file=sys.stderr)


class ProgressBar:
    """tqdm with loss and ETA on a terminal; plain log lines (about 20 per run) when output is a file."""

    def __init__(self, total: int, initial: int, label: str, enabled: bool = True):
        self.total, self.label = total, label
        self.tty = sys.stderr.isatty() and enabled
        self.enabled = enabled
        self.every = max(1, total // 20)
        self.t0, self.initial = time.perf_counter(), initial
        self.bar = None
        if self.tty:
            self.bar = tqdm(total=total, initial=initial, desc=label, unit="upd", dynamic_ncols=True)

    def step(self, loss: float, update: int) -> None:
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{loss:.3f}")
            self.bar.update(1)
        elif self.enabled and (update % self.every == 0 or update == self.total):
            done = update - self.initial
            rate = (time.perf_counter() - self.t0) / max(1, done)
            eta = rate * (self.total - update)
            print(
                f"[{self.label}] update {update}/{self.total} loss {loss:.4f} {rate:.2f}s/upd ETA {eta:.0f}s",
                file=sys.stderr,
                flush=True,
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

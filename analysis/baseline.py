"""The no-training floor of a sweep: experiments.data.baseline's heuristic (answer with the first span of the
question's answer type) scored on the sweep's own dev set, by the rules the runs were scored with.

    floor = no_training_floor(runs)     # Floor(em, score, metric, dev_examples, run_id); BaselineError if not possible
    no_training_f1(runs)                # floor.score, or None when it cannot be computed (the learning curves' line)

The dev set is rebuilt from the resolved config.yaml of a run of the sweep (experiments.data.loading.load_examples:
the generated set is deterministic in its seed, local files and hub datasets are read as the run read them), so the
floor is computed, never copied. Every run of the sweep must share its data settings (the cache folder aside).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from experiments.rundir import CONFIG_FILE

# data keys that do not change which examples a run sees
_IGNORED_DATA_KEYS = ("data.generated.cache_dir",)


class BaselineError(RuntimeError):
    """The floor cannot be computed for this sweep; the message is one line."""


@dataclass(frozen=True)
class Floor:
    em: float  # exact match, percent
    score: float  # the primary score, percent: F1, or ROUGE-W for data.metric=klue
    metric: str  # the primary score's key: "dev/f1" or "dev/rouge_w"
    dev_examples: int  # questions scored
    run_id: str  # the run whose config gave the data


def _data_columns(runs: pd.DataFrame) -> list[str]:
    return sorted(c for c in runs.columns if c.startswith("data.") and c not in _IGNORED_DATA_KEYS)


def _same_data(runs: pd.DataFrame) -> bool:
    columns = _data_columns(runs)
    if not columns:
        return True
    rows = {tuple("–" if (isinstance(v, float) and math.isnan(v)) else str(v) for v in row) for row in
            runs[columns].itertuples(index=False)}  # fmt: skip
    return len(rows) == 1


def no_training_floor(runs: pd.DataFrame) -> Floor:
    """The heuristic's EM and primary score on the dev set of the runs (the frame of analysis.collect.collect_runs).

    Raises BaselineError (one line) when no run has a config.yaml, when the runs differ in their data settings, or
    when the data cannot be loaded (e.g. a hub dataset offline)."""
    # the data loading needs `datasets` (and the generated set's vocabulary): imported here so that the report's
    # tables stay light
    from experiments.config import ConfigError, load_config
    from experiments.data.baseline import heuristic_baseline
    from experiments.data.errors import DataError
    from experiments.data.loading import load_examples
    from experiments.qa_eval import metric_keys

    with_dirs = runs[runs["run_dir"].map(lambda d: isinstance(d, str) and (Path(d) / CONFIG_FILE).is_file())]
    if with_dirs.empty:
        raise BaselineError("no run directory with a config.yaml to rebuild the dev set from")
    if not _same_data(with_dirs):
        raise BaselineError("the runs differ in their data settings: no single dev set to score")
    first = with_dirs.iloc[0]
    try:
        cfg = load_config([Path(first["run_dir"]) / CONFIG_FILE])
        _, dev, _ = load_examples(cfg.data)
    except (ConfigError, DataError, OSError) as err:
        raise BaselineError(f"cannot load the dev set of {first['run_id']}: {str(err).splitlines()[0]}") from None
    scores = heuristic_baseline(dev, cfg.data.metric, cfg.data.version_2_with_negative)
    _, second = metric_keys(cfg.data.metric)
    return Floor(
        em=scores["exact_match"],
        score=scores[second.split("/", 1)[1]],
        metric=second,
        dev_examples=len(dev),
        run_id=str(first["run_id"]),
    )


def no_training_f1(runs: pd.DataFrame) -> float | None:
    """The floor's primary score (dev F1, or ROUGE-W for KLUE-MRC runs), or None when it cannot be computed."""
    try:
        return no_training_floor(runs).score
    except BaselineError:
        return None

"""The arms of the experiment: one table that config, collect, plots, stats, the report and sharpness read.

An arm is a name for one training algorithm: which replay rule the update uses (``optim.replay``, one of
``sam.REPLAY_MODES``) plus how tables and figures show it. The table order is the report order. Adding an arm means
one row here and one ``configs/arm/<name>.yaml`` holding exactly ``arm: <name>`` and ``optim.replay: <replay>``
(tests/test_config.py checks that the two agree, and that every replay rule has its arm); a new algorithm is also
its replay function in sam/train_step.py; learning rates and rho are not arm properties (they live in
configs/default.yaml and the model files), so the order of config files on a command line cannot change them.

The comparisons name the paired differences a − b (same seed and k) that the report and the sharpness section make.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Arm:
    name: str  # `arm` in the config, run ids, tables
    replay: str  # `optim.replay`: none | full | last | micro | last_only
    label: str  # legend text
    color: str  # matplotlib colour
    # sam_last is dashed so that at k = 1, where it must equal sam_full exactly, both lines stay visible on top of
    # each other.
    linestyle: object = "-"


ARMS: tuple[Arm, ...] = (
    Arm("adamw", "none", "AdamW", "#3a3a3a"),
    Arm("sam_full", "full", "SAM, full replay", "#1f63c6"),
    Arm("sam_last", "last", "SAM, last-batch replay (bug)", "#d62728", linestyle=(0, (4, 2))),
    Arm("sam_micro", "micro", "m-SAM", "#2ca02c"),
    # dotted: at k = 1 it too must equal sam_full exactly
    Arm(
        "sam_last_only", "last_only", "SAM, last micro-batch only (Trainer pattern)", "#e08214", linestyle=(0, (1, 1.5))
    ),
)
BY_NAME: dict[str, Arm] = {arm.name: arm for arm in ARMS}
ARM_ORDER: tuple[str, ...] = tuple(arm.name for arm in ARMS)
ARM_OF_REPLAY: dict[str, str] = {arm.replay: arm.name for arm in ARMS}

# The question of the repo: correct full-accumulation replay against the copied last-batch replay. At k = 1 the two
# are the same algorithm (the sanity check); at k > 1 their difference is the cost of the bug.
CORRECT, BUGGY = "sam_full", "sam_last"
# The public SAMTrainer pattern (a `training_step` override that zeroes the gradients and runs SAM on the micro-batch
# it is given): under accumulation it is SAM on the last micro-batch of each window alone, the bug Trainer users run.
TRAINER_PATTERN = "sam_last_only"
# At k = 1 (one micro-batch per update) these arms run exactly the algorithm of CORRECT: the report's sanity row
# checks each of them against it, seed by seed.
SAME_AS_CORRECT_AT_K1: tuple[str, ...] = (BUGGY, TRAINER_PATTERN, "sam_micro")
BASELINE = "adamw"  # plain AdamW: what SAM is compared to, and the reference of the step-time ratios

# (a, b, what a − b measures), in the order the report lists them.
COMPARISONS: tuple[tuple[str, str, str], ...] = (
    (CORRECT, BUGGY, "the cost of the last-batch replay bug"),
    (CORRECT, TRAINER_PATTERN, "the cost of the public Trainer pattern (SAM on the last micro-batch alone)"),
    (CORRECT, BASELINE, "what correct SAM buys over AdamW"),
    ("sam_micro", CORRECT, "m-SAM against SAM"),
)
# The sharpness section: paired differences a − b of every measure, and the endpoints of the interpolation curves.
SHARPNESS_DIFFERENCES: tuple[tuple[str, str], ...] = ((CORRECT, BASELINE), (CORRECT, BUGGY))
INTERPOLATION_PAIRS: tuple[tuple[str, str], ...] = ((BASELINE, CORRECT), (CORRECT, BUGGY))

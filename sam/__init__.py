"""SAM that is correct under gradient accumulation. Imports torch only.

from sam import SAM, train_step
"""

from .optimizer import SAM
from .train_step import REPLAY_MODES, StepResult, train_step

__all__ = ["SAM", "train_step", "StepResult", "REPLAY_MODES"]

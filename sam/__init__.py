"""SAM that is correct under gradient accumulation. Imports torch only.

from sam import SAM, train_step, windows
from sam.hf import SAMTrainer  # the Hugging Face Trainer drop-in (imports transformers)
"""

from .optimizer import SAM
from .train_step import REPLAY_MODES, StepResult, train_step
from .windows import windows

__all__ = ["SAM", "train_step", "StepResult", "REPLAY_MODES", "windows"]

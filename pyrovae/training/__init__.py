"""Training by SVI: the step, the loop and its callbacks, the optimizers, and ``fit``."""
from .fitting import Run, fit, load_run, prepare_data
from .loop import Callback, NonFiniteLoss, Trainer, TrainingInterrupted

__all__ = ["fit", "load_run", "Run", "prepare_data", "Trainer", "Callback", "TrainingInterrupted", "NonFiniteLoss"]

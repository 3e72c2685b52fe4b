"""Training by SVI: the step, the loop and its callbacks, and the optimizers (``fit``, which writes
a run folder around them, is :mod:`pyrovae.workflows`)."""
from .loop import Callback, NonFiniteLoss, Trainer, TrainingInterrupted

__all__ = ["Trainer", "Callback", "TrainingInterrupted", "NonFiniteLoss"]

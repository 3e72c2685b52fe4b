"""A run from end to end, on top of every other layer: ``fit`` writes a run folder (training with
its callbacks, checkpoints, metrics and pictures), ``load_run`` reads one back for evaluation."""
from .fitting import Run, fit, load_run, prepare_data

__all__ = ["fit", "load_run", "Run", "prepare_data"]

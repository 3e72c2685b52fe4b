"""A run from end to end, on top of every other layer: ``fit`` writes a run folder (training with
its callbacks, checkpoints, metrics and pictures), ``load_run`` reads one back for evaluation, and
:mod:`.evaluating` evaluates it (the points and proposal, the record tied to the checkpoint)."""
from .evaluating import RunFolder, bdmc_run, compare_run, evaluate_run, points_and_proposal
from .fitting import Run, fit, load_run, prepare_data

__all__ = ["fit", "load_run", "Run", "prepare_data", "RunFolder", "points_and_proposal", "evaluate_run",
           "compare_run", "bdmc_run"]

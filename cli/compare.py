"""``pyrovae compare RUN_DIR``: the amortization and approximation gaps of a trained run
(Cremer, Li & Duvenaud 2018); the work is done by :func:`pyrovae.inference.compare.compare_inference`."""
from __future__ import annotations

from pathlib import Path

import click

from pyrovae.cli.options import (DATA_DIR, DEVICE, MOVED_DATASET, MOVED_PROGRAM, NO_RECORD, RESUME, THREADS,
                                 check_record, emit, partial_path, record, say)
from pyrovae.core.errors import UsageError
from pyrovae.evaluation.ais import CHAINS, LEAPFROG
from pyrovae.evaluation.ais import STEPS as AIS_STEPS
from pyrovae.inference.compare import BATCH_SIZE, DEFAULT_REFINE_STEPS
from pyrovae.runs import PARTIAL

DEFAULTS = {"--limit": 1000, "--k": 5000, "--steps": 3000, "--lr": 0.05, "--batch-size": BATCH_SIZE,
            "--eval-samples": 100}


def _positive(name: str, value: int | float) -> None:
    if not value > 0:
        raise UsageError(f"{name} must be positive, got {value}; e.g. {name} {DEFAULTS[name]}")


@click.command()
@click.argument("run_dir", type=click.Path())
@click.option("--limit", default=DEFAULTS["--limit"], show_default=True,
              help="Evaluate the first LIMIT points of the split.")
@click.option("--k", default=DEFAULTS["--k"], show_default=True, help="Importance samples per point for log p(x).")
@click.option("--steps", default=DEFAULTS["--steps"], show_default=True,
              help="Most Adam steps of the test-time fit of q*.")
@click.option("--lr", default=DEFAULTS["--lr"], show_default=True, help="Adam learning rate of the test-time fit.")
@click.option("--refine-steps", default=DEFAULT_REFINE_STEPS, show_default=True,
              help="Steps of semi-amortized refinement from the encoder (0: skip).")
@click.option("--eval-samples", default=DEFAULTS["--eval-samples"], show_default=True,
              help="Reconstruction draws per ELBO estimate.")
@click.option("--split", type=click.Choice(["test", "train", "both"]), default=None,
              help="Points to evaluate [default: test; both for a meanfield run].")
@click.option("--batch-size", default=DEFAULTS["--batch-size"], show_default=True,
              help="Points fitted together; also what an interrupt keeps (finished batches).")
@click.option("--log-px", type=click.Choice(["is", "ais"]), default="is", show_default=True,
              help="log p(x) by importance sampling from q* (--k), or by AIS from q* as Cremer et al. (2018) did "
                   "(--ais-steps, --chains, --leapfrog).")
@click.option("--ais-steps", default=AIS_STEPS, show_default=True, type=int, help="AIS: intermediate distributions.")
@click.option("--chains", default=CHAINS, show_default=True, type=int, help="AIS: chains per point.")
@click.option("--leapfrog", default=LEAPFROG, show_default=True, type=int, help="AIS: leapfrog steps per transition.")
@click.option("--seed", default=0, show_default=True, help="Seeds the fits and every draw.")
@DEVICE
@DATA_DIR
@MOVED_DATASET
@MOVED_PROGRAM
@RESUME
@NO_RECORD
@THREADS
def compare(run_dir: str, limit: int, k: int, steps: int, lr: float, refine_steps: int, eval_samples: int,
            split: str | None, batch_size: int, log_px: str, ais_steps: int, chains: int, leapfrog: int, seed: int,
            device: str, data_dir: str | None, dataset: str | None, program: str | None, resume: bool,
            no_record: bool) -> None:
    """Amortization gap L[q*] - L[q] and approximation gap log p(x) - L[q*] of RUN_DIR.

    Ctrl-C keeps the finished batches of points; --resume continues from them."""
    for name, value in (("--limit", limit), ("--k", k), ("--steps", steps), ("--lr", lr),
                        ("--batch-size", batch_size), ("--eval-samples", eval_samples)):
        _positive(name, value)
    from pyrovae.evaluation.ais import check_ais_options
    check_ais_options(ais_steps, chains, leapfrog)
    if refine_steps < 0:
        raise UsageError(f"--refine-steps must be >= 0, got {refine_steps}; pass 0 to skip the refinement")
    keeps = check_record(run_dir, no_record)
    from pyrovae.core import heap
    from pyrovae.inference.compare import compare_inference, format_table
    from pyrovae.workflows import load_run

    heap.keep_freed_memory()   # the CLI process opts in to the evaluator's heap settings
    run = load_run(run_dir, device, data_dir, dataset=dataset, program=program)
    per_datapoint = run.vae.can("per_datapoint")
    splits = {"both": ["train", "test"], None: ["train", "test"] if per_datapoint else ["test"]}.get(split, [split])
    result = {"run_dir": run_dir, "guide": run.config.guide, "epoch": run.epoch, "k": k, "seed": seed}
    if resume and not any((Path(run_dir) / PARTIAL).glob("compare-*.npz")):
        raise UsageError(f"{run_dir!r} holds no interrupted comparison to resume; run without --resume")
    for name in splits:
        x, index = run.points(name, limit, seed)
        options = {"command": "compare", "split": name, "limit": limit, "epoch": run.epoch,
                   "checkpoint": run.checkpoint}   # partial points are of this checkpoint only
        path = partial_path(run_dir, "compare", {**options, "k": k, "steps": steps, "lr": lr, "seed": seed,
                                                 "log_px": log_px, "ais_steps": ais_steps, "chains": chains,
                                                 "leapfrog": leapfrog,
                                                 "refine_steps": refine_steps, "eval_samples": eval_samples,
                                                 "batch_size": batch_size})
        table = compare_inference(run, x, index=index, k=k, steps=steps, lr=lr, refine_steps=refine_steps,
                                  eval_samples=eval_samples, batch_size=batch_size, seed=seed, progress=True,
                                  partial_path=path if keeps or resume else None, resume=resume and path.exists(),
                                  options=options,
                                  log_px=log_px, ais_steps=ais_steps, chains=chains, leapfrog=leapfrog)
        say(format_table(table, f"{name} points of {run_dir}"))
        result[name] = table
    record(run_dir, "compare", {"limit": limit, "k": k, "steps": steps, "lr": lr, "refine_steps": refine_steps,
                                "eval_samples": eval_samples, "split": split, "batch_size": batch_size, "log_px": log_px,
                                "ais_steps": ais_steps, "chains": chains, "leapfrog": leapfrog, "seed": seed,
                                "epoch": run.epoch}, result, no_record, run.checkpoint)
    emit(result)


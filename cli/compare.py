"""``pyrovae compare RUN_DIR``: the amortization and approximation gaps of a trained run
(Cremer, Li & Duvenaud 2018); the work is done by :func:`pyrovae.inference.compare.compare_inference`."""
from __future__ import annotations

import click
from pyrovae.cli.options import DATA_DIR, DEVICE, emit

from pyrovae.inference.compare import DEFAULT_REFINE_STEPS
from pyrovae.errors import UsageError

DEFAULTS = {"--limit": 1000, "--k": 5000, "--steps": 3000, "--lr": 0.05, "--batch-size": 1000,
            "--eval-samples": 100}


def _positive(name: str, value: int | float) -> None:
    if not value > 0:
        raise UsageError(f"{name} must be positive, got {value}; e.g. {name} {DEFAULTS[name]}")


@click.command()
@click.argument("run_dir")
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
@click.option("--batch-size", default=DEFAULTS["--batch-size"], show_default=True, help="Points fitted at once.")
@click.option("--seed", default=0, show_default=True)
@DEVICE
@DATA_DIR
def compare(run_dir: str, limit: int, k: int, steps: int, lr: float, refine_steps: int, eval_samples: int,
            split: str | None, batch_size: int, seed: int, device: str, data_dir: str | None) -> None:
    """Amortization gap L[q*] - L[q] and approximation gap log p(x) - L[q*] of RUN_DIR."""
    for name, value in (("--limit", limit), ("--k", k), ("--steps", steps), ("--lr", lr),
                        ("--batch-size", batch_size), ("--eval-samples", eval_samples)):
        _positive(name, value)
    if refine_steps < 0:
        raise UsageError(f"--refine-steps must be >= 0, got {refine_steps}; pass 0 to skip the refinement")
    from pyrovae import heap
    from pyrovae.inference.compare import compare_inference, format_table
    from pyrovae.training import load_run

    heap.keep_freed_memory()   # the CLI process opts in to the evaluator's heap settings
    run = load_run(run_dir, device, data_dir)
    per_datapoint = run.vae.can("per_datapoint")
    splits = {"both": ["train", "test"], None: ["train", "test"] if per_datapoint else ["test"]}.get(split, [split])
    result = {"run_dir": run_dir, "guide": run.config.guide, "epoch": run.epoch, "k": k, "seed": seed}
    for name in splits:
        x, index = run.points(name, limit, seed)
        table = compare_inference(run, x, index=index, k=k, steps=steps, lr=lr, refine_steps=refine_steps,
                                  eval_samples=eval_samples, batch_size=batch_size, seed=seed, progress=True)
        click.echo(format_table(table, f"{name} points of {run_dir}"), err=True)
        result[name] = table
    emit(result)


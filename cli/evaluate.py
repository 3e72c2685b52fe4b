"""``pyrovae evaluate RUN_DIR``: log p(x) by importance sampling, with its standard error and
diagnostics; the work is done by :func:`pyrovae.evaluation.importance.estimate_log_likelihood`."""
from __future__ import annotations

import time

import click
from pyrovae.cli.options import (DATA_DIR, DEVICE, MOVED_DATASET, RESUME, emit, output_file, partial_path,
                                 progress_bar)

from pyrovae.errors import UsageError
from pyrovae.evaluation.importance import BATCH_SIZE, CHUNK_SIZE, COMPILE_PAIRS


@click.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--k", default=5000, show_default=True, help="Importance samples per datapoint.")
@click.option("--split", type=click.Choice(["test", "train"]), default="test", show_default=True,
              help="Which points to evaluate.")
@click.option("--limit", default=None, type=int, help="Evaluate only the first LIMIT points [default: all].")
@click.option("--proposal", type=click.Choice(["guide", "fit", "prior"]), default=None,
              help="guide: the run's own q [default]; fit: a per-point q fitted with the model frozen "
                   "[default for test points of a guide without an encoder]; prior: p(z), a bad check.")
@click.option("--batch-size", default=BATCH_SIZE, show_default=True, help="Datapoints per decoder pass.")
@click.option("--chunk-size", default=CHUNK_SIZE, show_default=True, help="Particles per decoder pass.")
@click.option("--compile/--no-compile", "compile_", default=None,
              help=f"Fuse the log densities with torch.compile (about 1 s to compile, 11 s the first time; "
                   f"about a quarter less time after) [default: when points x K >= {COMPILE_PAIRS:,}].")
@click.option("--seed", default=0, show_default=True, help="Seeds every draw (per point and particle).")
@DEVICE
@DATA_DIR
@MOVED_DATASET
@click.option("--per-point", default=None, type=click.Path(dir_okay=False),
              help="Write per-datapoint values to this .csv or .npz file.")
@RESUME
def evaluate(run_dir: str, k: int, split: str, limit: int | None, proposal: str | None, batch_size: int,
             chunk_size: int, compile_: bool | None, seed: int, device: str, data_dir: str | None,
             dataset: str | None, per_point: str | None, resume: bool) -> None:
    """log p(x) = log (1/K) sum_k p(x, z_k) / q(z_k | x), with its SE, the IWAE bounds, ESS and PSIS k-hat.

    Ctrl-C keeps the finished points; --resume continues from them."""
    for name, value in (("--k", k), ("--batch-size", batch_size), ("--chunk-size", chunk_size)):
        if value < 1:
            raise UsageError(f"{name} must be at least 1, got {value}")
    if limit is not None and limit < 1:
        raise UsageError(f"--limit must be at least 1, got {limit}; omit it to evaluate the whole split")
    per_point_path = output_file(per_point, "--per-point", (".csv", ".npz")) if per_point else None
    from pyrovae import heap
    from pyrovae.evaluation.importance import estimate_log_likelihood, write_per_point
    from pyrovae.guides.rows import take_rows
    from pyrovae.inference.local_fit import fit_local
    from pyrovae.training import load_run

    heap.keep_freed_memory()   # the CLI process opts in to the evaluator's heap settings
    started = time.perf_counter()
    run = load_run(run_dir, device, data_dir, dataset=dataset)
    x, index = run.points(split, limit, seed)
    encoder = run.vae.can("amortized")
    if proposal is None:
        proposal = "fit" if not encoder and split == "test" else "guide"
    if proposal == "guide" and not encoder and split == "test":
        raise UsageError(f"a --guide {run.config.guide} run has no q for test points; use --proposal fit "
                         "(the default) or --split train")
    options = {"command": "evaluate", "method": "is", "k": k, "split": split, "limit": limit, "proposal": proposal,
               "seed": seed, "epoch": run.epoch}
    extra = {}
    if proposal == "fit":
        has_q = encoder or index is not None
        fitted = fit_local(run.vae, x, init="q" if has_q else "prior", index=index, seed=seed,
                           progress=progress_bar("fit q per point"))
        proposal_arg = fitted.guide
        extra = {"fit_steps": max(fitted.steps), "fit_seconds": round(fitted.seconds, 3)}
    elif proposal == "guide" and index is not None:
        proposal_arg = take_rows(run.vae.guide, index)   # a per-datapoint guide's own rows
    else:
        proposal_arg = proposal
    result = estimate_log_likelihood(run.vae, x, k=k, proposal=proposal_arg, batch_size=batch_size,
                                     chunk_size=chunk_size, seed=seed, progress=True, compile=compile_,
                                     partial_path=partial_path(run_dir, "evaluate", options), resume=resume,
                                     options=options)
    summary = result.summary()
    if summary["warning"]:
        click.echo(f"pyrovae: warning: {summary['warning']}", err=True)
    if per_point_path is not None:
        write_per_point(result, per_point_path)
    emit({**summary, **extra, "proposal": proposal, "split": split, "run_dir": run_dir, "epoch": run.epoch,
          "seed": seed, "per_point": str(per_point_path) if per_point_path else None,
          "seconds": round(time.perf_counter() - started, 3)})


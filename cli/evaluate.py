"""``pyrovae evaluate RUN_DIR``: log p(x) by importance sampling, with its standard error and
diagnostics; the work is done by :func:`pyrovae.evaluation.importance.estimate_log_likelihood`."""
from __future__ import annotations

import time

import click

from pyrovae.cli.options import (DATA_DIR, DEVICE, MOVED_DATASET, MOVED_PROGRAM, NO_RECORD, RESUME, THREADS,
                                 check_record, emit, output_file, partial_path, progress_bar, record, say)
from pyrovae.core.errors import UsageError
from pyrovae.evaluation.ais import CHAINS, IS_K, LEAPFROG, PAIRS, STEPS
from pyrovae.evaluation.importance import BATCH_SIZE, CHUNK_SIZE, COMPILE_PAIRS

AIS_OPTIONS = [
    click.option("--steps", default=STEPS, show_default=True, type=int,
                 help="AIS: intermediate distributions T (a sigmoid schedule). The cost is T x chains x leapfrog "
                      "decoder passes (forward and backward) per point: the defaults cost about 50 times K=5000 IS."),
    click.option("--chains", default=CHAINS, show_default=True, type=int, help="AIS: chains per point."),
    click.option("--leapfrog", default=LEAPFROG, show_default=True, type=int,
                 help="AIS: leapfrog steps per HMC transition (step sizes adapt per chain toward 65% acceptance)."),
    click.option("--is-k", default=IS_K, show_default=True, type=click.IntRange(min=0),
                 help="AIS: importance samples of a reference IS estimate on the same points (0: none)."),
]


def ais_options(command):
    for decorate in reversed(AIS_OPTIONS):
        command = decorate(command)
    return command


@click.command()
@click.argument("run_dir", type=click.Path())
@click.option("--method", type=click.Choice(["is", "ais"]), default="is", show_default=True,
              help="is: importance sampling from the proposal; ais: annealed importance sampling from it "
                   "to the posterior (Wu et al. 2017), for when k-hat says IS is not reliable.")
@click.option("--k", default=5000, show_default=True, help="IS: importance samples per datapoint.")
@click.option("--split", type=click.Choice(["test", "train"]), default="test", show_default=True,
              help="Which points to evaluate.")
@click.option("--limit", default=None, type=int, help="Evaluate only the first LIMIT points [default: all].")
@click.option("--proposal", type=click.Choice(["guide", "encoder", "fit", "prior"]), default=None,
              help="The start of IS or AIS. guide (or encoder): the run's own q [default]; fit: a per-point q fitted "
                   "with the model frozen [default for test points of a guide without an encoder]; prior: p(z), "
                   "a bad check for IS, the classic start for AIS.")
@ais_options
@click.option("--batch-size", default=None, type=int,
              help=f"Datapoints per pass [default: {BATCH_SIZE} for IS, {PAIRS:,} / chains for AIS].")
@click.option("--chunk-size", default=CHUNK_SIZE, show_default=True, help="IS: particles per decoder pass.")
@click.option("--compile/--no-compile", "compile_", default=None,
              help=f"Fuse the log densities with torch.compile (about 1 s to compile, 11 s the first time; "
                   f"about a quarter less time after) [default: when points x K >= {COMPILE_PAIRS:,}].")
@click.option("--seed", default=0, show_default=True, help="Seeds every draw (per point and particle).")
@DEVICE
@DATA_DIR
@MOVED_DATASET
@MOVED_PROGRAM
@click.option("--per-point", default=None, type=click.Path(),
              help="Write per-datapoint values to this .csv or .npz file.")
@RESUME
@NO_RECORD
@THREADS
def evaluate(run_dir: str, method: str, k: int, split: str, limit: int | None, proposal: str | None, steps: int,
             chains: int, leapfrog: int, is_k: int, batch_size: int | None, chunk_size: int, compile_: bool | None,
             seed: int, device: str, data_dir: str | None, dataset: str | None, program: str | None,
             per_point: str | None,
             resume: bool, no_record: bool) -> None:
    """log p(x) of RUN_DIR's model, with its SE and diagnostics.

    IS: log (1/K) sum_k p(x, z_k) / q(z_k | x) with the IWAE bounds, ESS and PSIS k-hat. AIS: C
    chains annealed from q to the posterior by HMC, with acceptance, step sizes and the chains' ESS.
    Ctrl-C keeps the finished points; --resume continues from them."""
    from pyrovae.evaluation.ais import check_ais_options
    check_ais_options(steps, chains, leapfrog)
    for name, value in (("--k", k), ("--batch-size", batch_size or 1), ("--chunk-size", chunk_size)):
        if value < 1:
            raise UsageError(f"{name} must be at least 1, got {value}")
    proposal = "guide" if proposal == "encoder" else proposal
    if limit is not None and limit < 1:
        raise UsageError(f"--limit must be at least 1, got {limit}; omit it to evaluate the whole split")
    per_point_path = output_file(per_point, "--per-point", (".csv", ".npz")) if per_point else None
    keeps = check_record(run_dir, no_record)
    from pyrovae.core import heap
    from pyrovae.evaluation.importance import estimate_log_likelihood, write_per_point
    from pyrovae.guides.rows import take_rows
    from pyrovae.inference.local_fit import fit_local
    from pyrovae.workflows import load_run

    heap.keep_freed_memory()   # the CLI process opts in to the evaluator's heap settings
    started = time.perf_counter()
    run = load_run(run_dir, device, data_dir, dataset=dataset, program=program)
    x, index = run.points(split, limit, seed)
    encoder = run.vae.can("amortized")
    if proposal is None:
        proposal = "fit" if not encoder and split == "test" else "guide"
    if proposal == "guide" and not encoder and split == "test":
        raise UsageError(f"a --guide {run.config.guide} run has no q for test points; use --proposal fit "
                         "(the default) or --split train")
    options = {"command": "evaluate", "method": method, "split": split, "limit": limit, "proposal": proposal,
               "seed": seed, "epoch": run.epoch, **({"k": k} if method == "is" else
                                                   {"steps": steps, "chains": chains, "leapfrog": leapfrog})}
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
    tied = {**options, "checkpoint": run.checkpoint}   # partial points are of this checkpoint only
    path = partial_path(run_dir, "evaluate", tied) if keeps or resume else None
    if method == "ais":
        from pyrovae.evaluation.ais import estimate_log_likelihood_ais
        result = estimate_log_likelihood_ais(run.vae, x, steps=steps, chains=chains, leapfrog=leapfrog,
                                             proposal=proposal_arg, batch_size=batch_size, seed=seed, progress=True,
                                             is_k=is_k, partial_path=path, resume=resume, options=tied,
                                             compile=compile_)
    else:
        result = estimate_log_likelihood(run.vae, x, k=k, proposal=proposal_arg, batch_size=batch_size or BATCH_SIZE,
                                         chunk_size=chunk_size, seed=seed, progress=True, compile=compile_,
                                         partial_path=path, resume=resume, options=tied)
    summary = result.summary()
    if summary.get("warning"):
        say(f"pyrovae: warning: {summary['warning']}")
    if per_point_path is not None:
        write_per_point(result, per_point_path)
    out = {**summary, **extra, "proposal": proposal, "split": split, "run_dir": run_dir, "epoch": run.epoch,
           "seed": seed, "per_point": str(per_point_path) if per_point_path else None,
           "seconds": round(time.perf_counter() - started, 3)}
    record(run_dir, "evaluate", {**options, "batch_size": batch_size, "chunk_size": chunk_size, "is_k": is_k}, out,
           no_record, run.checkpoint)
    emit(out)


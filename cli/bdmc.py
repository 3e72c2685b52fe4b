"""``pyrovae bdmc RUN_DIR``: the bidirectional Monte Carlo sandwich of log p(x) on data simulated
from the run's model (Grosse et al. 2015); the work is done by :func:`pyrovae.evaluation.ais.bdmc`."""
from __future__ import annotations

import time

import click

from pyrovae.cli.evaluate import ais_options
from pyrovae.cli.options import (DATA_DIR, DEVICE, MOVED_DATASET, MOVED_PROGRAM, NO_RECORD, RESUME, THREADS,
                                 check_record, emit, partial_path, record, say)


@click.command()
@click.argument("run_dir", type=click.Path())
@click.option("--n", default=100, show_default=True, type=click.IntRange(min=1),
              help="Points (z, x) to simulate from the model.")
@ais_options
@click.option("--proposal", type=click.Choice(["guide", "encoder", "prior"]), default="guide", show_default=True,
              help="Where the forward chains start (and the reverse ones end): the run's q, or p(z).")
@click.option("--batch-size", default=None, type=int, help="Points annealed together [default: 10,000 / chains].")
@click.option("--seed", default=0, show_default=True, help="Seeds the simulation and every draw.")
@DEVICE
@DATA_DIR
@MOVED_DATASET
@MOVED_PROGRAM
@RESUME
@NO_RECORD
@THREADS
def bdmc(run_dir: str, n: int, steps: int, chains: int, leapfrog: int, is_k: int, proposal: str,
         batch_size: int | None, seed: int, device: str, data_dir: str | None, dataset: str | None,
         program: str | None, resume: bool, no_record: bool) -> None:
    """Forward AIS (a lower bound) and reverse AIS from the exact posterior sample (an upper bound)
    of log p(x) on N points simulated from RUN_DIR's model: their gap says how many --steps an
    evaluation needs. Also the IS estimate and ELBO of the same points.

    Ctrl-C keeps the finished points; --resume continues from them."""
    from pyrovae.core.programs import rows_of
    from pyrovae.evaluation.ais import bdmc as sandwich
    from pyrovae.evaluation.ais import check_ais_options
    from pyrovae.workflows import load_run

    check_ais_options(steps, chains, leapfrog)
    keeps = check_record(run_dir, no_record)
    started = time.perf_counter()
    run = load_run(run_dir, device, data_dir, dataset=dataset, program=program)
    if not run.vae.can("amortized") and proposal != "prior":
        proposal = "prior"   # a guide without an encoder has no q for simulated points
        say(f"pyrovae: note: a --guide {run.config.guide} run has no q for new points; the chains start at the prior")
    template = rows_of(run.data.test, [i % len(run.data.test[0]) for i in range(n)])
    options = {"command": "bdmc", "epoch": run.epoch, "checkpoint": run.checkpoint}   # points of this checkpoint only
    path = partial_path(run_dir, "bdmc", {**options, "n": n, "steps": steps, "chains": chains, "leapfrog": leapfrog,
                                          "is_k": is_k, "proposal": proposal, "seed": seed, "batch_size": batch_size})
    result = sandwich(run.vae, template, steps=steps, chains=chains, leapfrog=leapfrog, seed=seed,
                      proposal="guide" if proposal == "encoder" else proposal, batch_size=batch_size, is_k=is_k,
                      progress=True, partial_path=path if keeps or resume else None, resume=resume, options=options)
    summary = result.summary()
    say(f"BDMC on {n} simulated points, T = {steps}: {summary['forward_lower_bound']:.3f} <= log p(x) <= "
        f"{summary['reverse_upper_bound']:.3f} (gap {summary['gap']:.3f} ± {summary['gap_se']:.3f} nats)")
    out = {**summary, "run_dir": run_dir, "epoch": run.epoch, "seconds": round(time.perf_counter() - started, 3)}
    record(run_dir, "bdmc", {"n": n, "steps": steps, "chains": chains, "leapfrog": leapfrog, "is_k": is_k,
                             "proposal": proposal, "seed": seed, "epoch": run.epoch}, out, no_record, run.checkpoint)
    emit(out)

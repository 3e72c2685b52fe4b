"""``pyrovae evaluate RUN_DIR``: log p(x) by importance sampling or AIS, with its standard error
and diagnostics; the work is done by :func:`pyrovae.workflows.evaluating.evaluate_run`."""
from __future__ import annotations

import click

from pyrovae.cli.main import short_help
from pyrovae.cli.options import emit, evaluating, given_options, options_from, run_folder, say
from pyrovae.core import heap
from pyrovae.evaluation.settings import BATCH_SIZE, PAIRS, AISSettings, ISSettings
from pyrovae.workflows.evaluating import EvaluateSettings, evaluate_run

# IS and AIS default to other batch sizes: one flag, given to the method chosen
BATCH_SIZE_OPTION = click.option(
    "--batch-size", default=None, type=int,
    help=f"Datapoints per pass [default: {BATCH_SIZE} for IS, {PAIRS:,} / chains for AIS].")


@click.command(short_help=short_help("evaluate"))
@click.argument("run_dir", type=click.Path())
@options_from(EvaluateSettings)
@options_from((ISSettings, "IS"), (AISSettings, "AIS"), skip=("batch_size",))
@BATCH_SIZE_OPTION
@evaluating
@click.pass_context
def evaluate(ctx: click.Context, **_) -> None:
    """log p(x) of RUN_DIR's model, with its SE and diagnostics.

    IS: log (1/K) sum_k p(x, z_k) / q(z_k | x) with the IWAE bounds, ESS and PSIS k-hat. AIS: C
    chains annealed from q to the posterior by HMC, with acceptance, step sizes and the chains' ESS.
    Ctrl-C keeps the finished points; --resume continues from them."""
    settings = given_options(ctx, EvaluateSettings)
    importance, annealing = given_options(ctx, ISSettings), given_options(ctx, AISSettings)
    heap.keep_freed_memory()   # the CLI process opts in to the evaluator's heap settings
    emit(evaluate_run(run_folder(ctx), settings, importance=importance, annealing=annealing, progress=True, say=say))

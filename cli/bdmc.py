"""``pyrovae bdmc RUN_DIR``: the bidirectional Monte Carlo sandwich of log p(x) on data simulated
from the run's model (Grosse et al. 2015); the work is done by :func:`pyrovae.workflows.evaluating.bdmc_run`."""
from __future__ import annotations

import click

from pyrovae.cli.main import short_help
from pyrovae.cli.options import emit, evaluating, given_options, options_from, run_folder, say
from pyrovae.evaluation.settings import BDMCSettings
from pyrovae.workflows.evaluating import BDMCRunSettings, bdmc_run


@click.command(short_help=short_help("bdmc"))
@click.argument("run_dir", type=click.Path())
@options_from(BDMCRunSettings, BDMCSettings)
@evaluating
@click.pass_context
def bdmc(ctx: click.Context, **_) -> None:
    """Forward AIS (a lower bound) and reverse AIS from the exact posterior sample (an upper bound)
    of log p(x) on N points simulated from RUN_DIR's model: their gap says how many --steps an
    evaluation needs. Also the IS estimate and ELBO of the same points.

    Ctrl-C keeps the finished points; --resume continues from them."""
    settings, annealing = given_options(ctx, BDMCRunSettings), given_options(ctx, BDMCSettings)
    emit(bdmc_run(run_folder(ctx), settings, annealing=annealing, progress=True, say=say))

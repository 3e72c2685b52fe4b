"""``pyrovae compare RUN_DIR``: the amortization and approximation gaps of a trained run
(Cremer, Li & Duvenaud 2018); the work is done by :func:`pyrovae.workflows.evaluating.compare_run`."""
from __future__ import annotations

import click

from pyrovae.cli.main import short_help
from pyrovae.cli.options import emit, evaluating, given_options, options_from, run_folder, say
from pyrovae.core import heap
from pyrovae.inference.compare import CompareSettings
from pyrovae.workflows.evaluating import CompareRunSettings, compare_run


@click.command(short_help=short_help("compare"))
@click.argument("run_dir", type=click.Path())
@options_from(CompareRunSettings, CompareSettings)
@evaluating
@click.pass_context
def compare(ctx: click.Context, **_) -> None:
    """Amortization gap L[q*] - L[q] and approximation gap log p(x) - L[q*] of RUN_DIR.

    Ctrl-C keeps the finished batches of points; --resume continues from them."""
    settings, gaps = given_options(ctx, CompareRunSettings), given_options(ctx, CompareSettings)
    heap.keep_freed_memory()   # the CLI process opts in to the evaluator's heap settings
    emit(compare_run(run_folder(ctx), settings, compare=gaps, progress=True, say=say))

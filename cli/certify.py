"""``pyrovae certify RUN_DIR``: a log p(x) certified by Wu et al.'s protocol (BDMC chooses T, AIS
with tuned-then-frozen kernels at T, a check at 2T); the work is done by
:func:`pyrovae.workflows.evaluating.certify_run`."""
from __future__ import annotations

import click

from pyrovae.cli.main import short_help
from pyrovae.cli.options import emit, evaluating, given_options, options_from, run_folder, say
from pyrovae.core import heap
from pyrovae.evaluation.certify import CertifySettings
from pyrovae.workflows.evaluating import CertifyRunSettings, certify_run


@click.command(short_help=short_help("certify"))
@click.argument("run_dir", type=click.Path())
@options_from(CertifyRunSettings, CertifySettings)
@evaluating
@click.pass_context
def certify(ctx: click.Context, **_) -> None:
    """log p(x) of RUN_DIR's test points, certified: BDMC on points simulated from the model at
    T = --steps, 2T, ... until the gap's upper confidence bound is at most --target-gap nats; a
    tuning round fixes the HMC step size per temperature; AIS at that T on every point with those
    kernels frozen; the estimate at 2T on --check-points points must agree. The certificate goes
    to stdout, RUN_DIR/evaluations.jsonl and RUN_DIR/certificate.md.

    Ctrl-C keeps the estimate's finished points; --resume continues from them."""
    settings, protocol = given_options(ctx, CertifyRunSettings), given_options(ctx, CertifySettings)
    heap.keep_freed_memory()   # the CLI process opts in to the evaluator's heap settings
    emit(certify_run(run_folder(ctx), settings, certify=protocol, progress=True, say=say))

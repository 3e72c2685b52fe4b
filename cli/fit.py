"""``pyrovae fit``: train a VAE by SVI and write its run folder; the work is done by
:func:`pyrovae.workflows.fit`."""
from __future__ import annotations

from pathlib import Path

import click

from pyrovae.cli.main import short_help
from pyrovae.cli.options import DATA_DIR, DEVICE, THREADS, emit, given, options_from
from pyrovae.config import PRESETS, RESUMABLE, FitConfig, guide_options, model_options
from pyrovae.core.contract import declared
from pyrovae.core.errors import UsageError
from pyrovae.data import DataOptions
from pyrovae.guides import DEFAULT_GUIDE, GUIDES
from pyrovae.models import DEFAULT_MODEL, MODELS
from pyrovae.objectives import ObjectiveOptions
from pyrovae.training.options import TrainingOptions
from pyrovae.workflows import fit as train


def _registry_help(registry: dict, role: str) -> str:
    """'name: what it is; ...' from each registered family's ``cli_help``."""
    return "; ".join(f"{name}: {declared(family, role, 'cli_help') or name}" for name, family in registry.items()) + "."


@click.command(short_help=short_help("fit"))
@click.option("--model", type=click.Choice(list(MODELS)), default=DEFAULT_MODEL, show_default=True,
              help=_registry_help(MODELS, "model"))
@click.option("--guide", type=click.Choice(list(GUIDES)), default=DEFAULT_GUIDE, show_default=True,
              help=_registry_help(GUIDES, "guide"))
@click.option("--program", default=None,
              help="Your own Pyro model and guide: FILE.py:FACTORY or module:FACTORY, where FACTORY() returns a "
                   "pyrovae.VAE or a (model, guide) pair (every sample site in pyro.plate('data', len(x))). The run "
                   "records where it is; --model, --guide and their options do not apply.")
@options_from(DataOptions)
@DATA_DIR
@options_from(*((model_options(name), f"--model {name}") for name in MODELS))
@options_from(*((guide_options(name), f"--guide {name}") for name in GUIDES))
@options_from(ObjectiveOptions)
@options_from(TrainingOptions)
@DEVICE
@click.option("--preset", type=click.Choice(sorted(PRESETS)), default=None,
              help="A named recipe; options given on the command line override it.")
@click.option("--out", "run_dir", default="runs/latest", show_default=True, type=click.Path(),
              help="RUN_DIR to write: config.json, checkpoint.pt, metrics.jsonl, curves.png, samples.png, "
                   "reconstructions.png.")
@click.option("--resume", is_flag=True,
              help=f"Continue the run in --out from its checkpoint, with its own options; only "
                   f"{', '.join('--' + name.replace('_', '-') for name in RESUMABLE)} may differ (and --dataset "
                   f"when the data file has moved). Any other option given must match the run's.")
@click.option("--overwrite", is_flag=True, help="Replace a run already in --out.")
@click.option("--quiet", is_flag=True, help="No progress bar (the epoch lines and the JSON stay).")
@THREADS
@click.pass_context
def fit(ctx: click.Context, run_dir: str, resume: bool, overwrite: bool, quiet: bool, preset: str | None,
        **options) -> None:
    """Train a VAE by SVI and write RUN_DIR (config, checkpoint, metrics, images)."""
    chosen = given(ctx, list(options))   # the defaults are the library's: only what the command line says
    if chosen.get("program") and preset:
        raise UsageError(f"--program brings its own model and guide, so --preset {preset} would not apply; drop it")
    config_values = {**PRESETS.get(preset, {}), **chosen}
    if resume and (Path(run_dir) / "config.json").exists():
        # the run's own options, and what this command line says: the library refuses what may not change
        config = FitConfig.from_run(run_dir).replace(**config_values)
    else:
        config = FitConfig(**config_values)
    config.refuse_unused()
    emit(train(config, run_dir, resume=resume, overwrite=overwrite, progress=not quiet))

"""What the commands share: common options, the JSON result, output-path checks, and the flags
built from the library's options dataclasses (:func:`options_from`), whose defaults, help and
checks are stated once, in the library (:func:`given_options` makes them of what was given)."""
from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any, Callable, Sequence

import click
import torch

from pyrovae.core import options as library_options
from pyrovae.core.distributed import current
from pyrovae.runs import CHECKPOINTS
from pyrovae.training.options import TrainingOptions
from pyrovae.workflows.evaluating import RunFolder, check_output_file

DATA_DIR = click.option("--data-dir", default=None, type=click.Path(),
                        help="Folder holding MNIST/raw (else $PYROVAE_DATA_DIR); for a run, where MNIST is now.")
MOVED_DATASET = click.option("--dataset", "dataset", default=None, type=click.Path(),
                             help="Where the run's .npz/.npy data file is now, if it moved since `pyrovae fit`.")
MOVED_PROGRAM = click.option("--program", "program", default=None,
                             help="FILE.py:FACTORY: where a --program run's file is now, if it moved since `pyrovae fit`.")
def _threads(ctx, param, value: int | None) -> int | None:
    if value is not None:
        if value < 1:
            raise click.BadParameter(f"must be at least 1, got {value}", ctx, param)
        torch.set_num_threads(value)   # process-wide: the CLI's to set, never the library's
    return value


THREADS = click.option("--threads", type=int, default=None, callback=_threads, expose_value=False, is_eager=True,
                       help="Threads torch computes with [default: torch's choice, one per core]. Two heavy jobs "
                            "on one machine run faster with --threads 1 each than fighting over all cores.")
NO_RECORD = click.option("--no-record", is_flag=True,
                         help="Do not append this result to RUN_DIR/evaluations.jsonl.")
CHECKPOINT = click.option("--checkpoint", type=click.Choice(list(CHECKPOINTS)),
                          default=library_options.default_of(RunFolder, "checkpoint"), show_default=True,
                          help="Which checkpoint of RUN_DIR: last (checkpoint.pt) or best (best.pt: the epoch of the "
                               "best validation ELBO, for a run trained with --validation).")
RESUME = click.option("--resume", is_flag=True,
                      help="Continue an interrupted evaluation with the same options from the points it saved.")


def evaluating(command: Callable) -> Callable:
    """The options of a command that evaluates RUN_DIR (:func:`run_folder`): which checkpoint,
    where its model and data are now, --resume, --no-record and --threads."""
    for decorate in reversed([CHECKPOINT, DEVICE, DATA_DIR, MOVED_DATASET, MOVED_PROGRAM, RESUME, NO_RECORD, THREADS]):
        command = decorate(command)
    return command


def say(message: str) -> None:
    """A line on stderr for the user (rank 0's, in a distributed run)."""
    if current().is_main:
        click.echo(message, err=True)


def emit(result: dict | None) -> None:
    """The command's result: one JSON object on stdout (rank 0's, in a distributed run)."""
    if result is not None and current().is_main:
        click.echo(json.dumps(result, sort_keys=True, default=str))


def output_file(path: str, option: str, suffixes: tuple[str, ...]) -> Path:
    """Check an output path before any work is done: its suffix, and a writable folder."""
    return check_output_file(path, option.lstrip("-"), suffixes)


# ---------------------------------------------------------------------------- flags from options dataclasses

Owner = "type | tuple[type, str]"   # an options dataclass, or (dataclass, what it belongs to, e.g. '--guide flow')


def options_from(*owners, skip: Sequence[str] = (), show_default: bool = True) -> Callable:
    """A decorator adding one click option per field of the options dataclasses ``owners``
    (:func:`pyrovae.core.options.option`): ``--name`` (``--name/--no-name`` for a flag), its
    default, help and choices from the field, a parser for values such as comma lists. A field
    that several owners share (by inheritance) becomes one option; one that only some have says
    whose it is in its help (``(dataclass, '--guide flow')``)."""
    found: dict[str, tuple[dataclasses.Field, Any, list[str]]] = {}
    for owner in owners:
        cls, label = owner if isinstance(owner, tuple) else (owner, "")
        hints = typing.get_type_hints(cls)
        for f in library_options.fields(cls):
            if f.name in skip or not f.metadata["cli"]:
                continue
            if f.name not in found:
                found[f.name] = (f, hints[f.name], [])
            if label:
                found[f.name][2].append(label)
    labelled = sum(isinstance(owner, tuple) for owner in owners)
    # a field of every labelled owner is everyone's: no label
    decorators = [_click_option(f, hint, labels if len(labels) < labelled else [], show_default)
                  for f, hint, labels in found.values()]

    def decorate(command):
        for add in reversed(decorators):
            command = add(command)
        return command
    return decorate


def _click_option(f: dataclasses.Field, hint: Any, labels: list[str], show_default: bool) -> Callable:
    name, meta = f.name.replace("_", "-"), f.metadata
    help_text = (f"{' / '.join(labels)}: " if labels else "") + meta["help"]
    default = library_options.default(f)
    if meta["flag"]:
        off = meta["secondary"] or f"no-{name}"
        return click.option(f"--{name}/--{off}", f.name, default=default, show_default=show_default and default is not None,
                            help=help_text)
    choices = library_options.choices_of(f)
    if choices is not None:
        return click.option(f"--{name}", f.name, type=click.Choice(list(choices)), default=default,
                            show_default=show_default and default is not None, help=help_text)
    if meta["parse"] is not None:
        parse = meta["parse"]
        shown = ",".join(map(str, default)) if isinstance(default, (tuple, list)) else default
        return click.option(f"--{name}", f.name, default=shown, show_default=show_default,
                            callback=lambda ctx, param, value: parse(value, f"--{name}") if isinstance(value, str)
                            else value,
                            help=help_text)
    kind = _scalar(hint)
    return click.option(f"--{name}", f.name, type=kind, default=default,
                        show_default=show_default and default is not None, help=help_text)


def _scalar(hint: Any) -> type:
    """int, float or str from a field's type (``X | None`` is X)."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        hint = next(arg for arg in typing.get_args(hint) if arg is not type(None))
    return hint if hint in (int, float, str) else str


# one --device for every command: the training's option (TrainingOptions.device, which options_from
# leaves out), taken by the evaluating commands' RunFolder too
DEVICE = _click_option(library_options.field_of(TrainingOptions, "device"), str, [], show_default=True)


def given(ctx: click.Context, names: Sequence[str]) -> dict[str, Any]:
    """The options among ``names`` that the command line gave (not left at their defaults)."""
    return {name: ctx.params[name] for name in names
            if name in ctx.params and ctx.get_parameter_source(name) is not click.core.ParameterSource.DEFAULT}


def given_options(ctx: click.Context, options: type) -> Any:
    """The options dataclass ``options`` made of the values the command line gave for its fields
    (:func:`given`): every other field keeps the library's default, and the dataclass checks them."""
    return options(**given(ctx, [f.name for f in library_options.fields(options)]))


def run_folder(ctx: click.Context) -> RunFolder:
    """The folder a command evaluates: RUN_DIR and the options :func:`evaluating` adds."""
    return RunFolder(path=ctx.params["run_dir"], **{f.name: ctx.params[f.name] for f in dataclasses.fields(RunFolder)
                                                    if f.name != "path"})

"""What the commands share: common options, the JSON result, and output-path checks."""
from __future__ import annotations

import json
import os
from pathlib import Path

import click

from pyrovae import runs
from pyrovae.core.errors import UsageError
from pyrovae.runs import check_name, check_writable

DEVICE = click.option("--device", default="auto", show_default=True,
                      help="auto (CUDA when present), cpu, cuda or cuda:N.")
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
        import torch
        torch.set_num_threads(value)   # process-wide: the CLI's to set, never the library's
    return value


THREADS = click.option("--threads", type=int, default=None, callback=_threads, expose_value=False, is_eager=True,
                       help="Threads torch computes with [default: torch's choice, one per core]. Two heavy jobs "
                            "on one machine run faster with --threads 1 each than fighting over all cores.")
NO_RECORD = click.option("--no-record", is_flag=True,
                         help="Do not append this result to RUN_DIR/evaluations.jsonl.")
RESUME = click.option("--resume", is_flag=True,
                      help="Continue an interrupted evaluation with the same options from the points it saved.")


def check_record(run_dir: str, skip: bool) -> bool:
    """Before any work: whether RUN_DIR can take this command's record and partial results; a
    damaged evaluations.jsonl, or (unless --no-record) a folder this process cannot write, is
    refused. A read-only run evaluated with --no-record keeps nothing on an interrupt."""
    if not Path(run_dir).is_dir():
        return True   # load_run says what is wrong
    path = Path(run_dir) / runs.EVALUATIONS
    runs.read_jsonl(path)
    try:
        runs.check_writable(path, "the record of this result in", "fix the run folder's permissions, or pass "
                                                                   "--no-record")
    except UsageError:
        if not skip:
            raise
        return False
    return True


def record(run_dir: str, command: str, options: dict, summary: dict, skip: bool, checkpoint: str | None) -> None:
    """One line in RUN_DIR/evaluations.jsonl (rank 0's, unless --no-record), naming the
    checkpoint (its SHA-256) the result came from."""
    from pyrovae.core.distributed import current
    if not skip and current().is_main:
        runs.record_evaluation(Path(run_dir), command, options, summary, checkpoint)


def partial_path(run_dir: str, command: str, options: dict) -> Path:
    """Where an interrupted evaluation of RUN_DIR with these options keeps its finished points:
    one file whatever the checkpoint (``options["checkpoint"]``, and its epoch), so that resuming
    with another checkpoint says so."""
    from pyrovae.evaluation.driver import fingerprint
    keyed = {key: value for key, value in options.items() if key not in ("checkpoint", "epoch")}
    return Path(run_dir) / runs.PARTIAL / f"{command}-{fingerprint(keyed)}.npz"


def say(message: str) -> None:
    """A line on stderr for the user (rank 0's, in a distributed run)."""
    from pyrovae.core.distributed import current
    if current().is_main:
        click.echo(message, err=True)


def emit(result: dict | None) -> None:
    """The command's result: one JSON object on stdout (rank 0's, in a distributed run)."""
    from pyrovae.core.distributed import current
    if result is not None and current().is_main:
        click.echo(json.dumps(result, sort_keys=True, default=str))


def output_file(path: str, option: str, suffixes: tuple[str, ...]) -> Path:
    """Check an output path before any work is done: its suffix, and a writable folder."""
    out, wanted = Path(path), " or ".join(suffixes)
    check_name(out, option)   # first: the OS fails every question about a name that is too long
    if out.suffix.lower() not in suffixes:
        raise UsageError(f"{option} {path!r} must end in {wanted}")
    if out.is_dir():
        raise UsageError(f"{option} {path!r} is a folder; pass a file name ending in {wanted}")
    if not out.parent.is_dir():
        raise UsageError(f"{option} {path!r}: folder {str(out.parent)!r} does not exist; create it first")
    if not os.access(out.parent, os.W_OK):
        raise UsageError(f"{option} {path!r}: folder {str(out.parent)!r} is not writable; choose another path")
    check_writable(out, option)   # the name's length, and a file actually made there
    return out


def progress_bar(desc: str):
    """A progress bar on stderr for work that reports (done, total)."""
    from tqdm import tqdm
    state: dict = {}

    def update(done: int, total: int) -> None:
        if "bar" not in state:
            state["bar"] = tqdm(total=total, unit="pt", desc=desc, leave=False)
        state["bar"].update(done - state["bar"].n)
        if done >= total:
            state.pop("bar").close()
    return update

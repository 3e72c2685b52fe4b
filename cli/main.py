"""The ``pyrovae`` command: options are parsed here, the work is done by the library.

Every command prints one JSON object on stdout and its progress on stderr. Bad input gets a
one-line ``pyrovae: error: ...`` on stderr and exit code 2.

This module starts every command, so it imports neither torch nor the library's heavy modules:
``pyrovae --help`` and TAB completion of the command names answer from :data:`COMMANDS`, and a
command's module (``pyrovae.cli.fit``, ...) is imported once the command line names it.
"""
from __future__ import annotations

import contextlib
import importlib
import logging
import os
import shlex
import signal
import sys
import threading
from collections.abc import Iterator, Mapping
from typing import NoReturn

import click
from click.shell_completion import CompletionItem

from pyrovae.core.errors import Interrupted, UsageError, cli_audience

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

# every command: the module that defines it, and its line in `pyrovae --help` (the command's short_help)
COMMANDS = {
    "fit": ("pyrovae.cli.fit", "Train a VAE by SVI and write RUN_DIR."),
    "evaluate": ("pyrovae.cli.evaluate", "log p(x) of a run by IS or AIS, with diagnostics."),
    "compare": ("pyrovae.cli.compare", "The amortization and approximation gaps of a run."),
    "bdmc": ("pyrovae.cli.bdmc", "The BDMC sandwich of log p(x) on simulated data."),
    "certify": ("pyrovae.cli.certify", "log p(x) by Wu et al.'s protocol: BDMC-chosen T, frozen kernels."),
    "show": ("pyrovae.cli.show", "What runs recorded, side by side."),
    "sample": ("pyrovae.cli.pictures", "Images from the model's prior."),
    "reconstruct": ("pyrovae.cli.pictures", "Images above their reconstructions."),
    "interpolate": ("pyrovae.cli.pictures", "Decoder means along a path between two images."),
    "traverse": ("pyrovae.cli.pictures", "One row per latent unit, swept from -3 to 3."),
    "latent-map": ("pyrovae.cli.pictures", "Posterior means of the latents in 2-D."),
}


def short_help(name: str) -> str:
    """The command's line in ``pyrovae --help``: what its module passes to ``click.command``."""
    return COMMANDS[name][1]


def _is_main() -> bool:
    """Whether this process speaks: rank 0 of a distributed run, or a process alone (no process
    group exists before a command has loaded pyrovae's distributed context)."""
    loaded = sys.modules.get("pyrovae.core.distributed")
    return loaded is None or loaded.current().is_main


def _raised(module: str, name: str) -> type[BaseException]:
    """The exception class ``name`` of a pyrovae module, or, when the module was never imported
    (so nothing can have raised it), a class nothing raises: the handlers below load nothing."""
    loaded = sys.modules.get(module)
    return getattr(loaded, name) if loaded is not None else _Never


class _Never(Exception):
    """Raised by nothing."""


def fail(message: str, code: int = EXIT_USAGE, kind: str = "error", every_rank: bool = False) -> NoReturn:
    """The one-line error, then :func:`leave` with ``code``."""
    if every_rank or _is_main():   # a distributed run's processes stop together: rank 0 says why
        click.echo(f"pyrovae: {kind}: {message}", err=True)
    leave(code)


def leave(code: int, finished: bool = False) -> NoReturn:
    """End the command with exit code ``code``: every way out of a command passes here, except the
    traceback of an error no handler expected.

    A torchrun worker ends by :func:`end_process`, after tearing its process group down when the
    command ``finished`` (after an error a peer may be gone or inside a collective; the OS closes
    the sockets). Any other process leaves by ``sys.exit`` (the CLI also runs inside tests)."""
    distributed = sys.modules.get("pyrovae.core.distributed")
    if distributed is not None and distributed.launched_by_torchrun():
        if finished:
            distributed.teardown()
        end_process(code)
    sys.exit(code)


def end_process(code: int) -> NoReturn:
    """End a torchrun worker now, its output flushed and its files already written atomically:
    after a gloo process group (torch 2.14.1), the interpreter's own exit sometimes aborts in
    gloo's destructors ("terminate called without an active exception", exit -6; seen on a
    healthy run's rank 1 and after a dead peer, in tests/training/test_distributed.py, twice in
    four CI runs of 2026-12-07 on an Intel Xeon)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


# what to make smaller when memory runs out, by command
SMALLER = {"evaluate": "--batch-size (and --chunk-size)", "sample": "--n", "reconstruct": "--n", "latent-map": "--n",
           "traverse": "--units", "interpolate": "--images"}


@contextlib.contextmanager
def library_log_on_stderr() -> Iterator[None]:
    """What the library logs (the ``pyrovae`` logger: epoch lines, notes) as plain lines on stderr,
    rank 0's only in a distributed run: the CLI's to set, for the life of a command."""
    logger = logging.getLogger("pyrovae")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.addFilter(lambda record: _is_main())
    level, propagate = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate


class _Commands(Mapping):
    """The commands by name (a group's ``commands``), each imported from its module on first use."""

    def __getitem__(self, name: str) -> click.Command:
        if name not in COMMANDS:
            raise KeyError(name)
        return getattr(importlib.import_module(COMMANDS[name][0]), name.replace("-", "_"))

    def __contains__(self, name: object) -> bool:   # without importing anything
        return name in COMMANDS

    def __iter__(self) -> Iterator[str]:
        return iter(COMMANDS)

    def __len__(self) -> int:
        return len(COMMANDS)


class PyrovaeGroup(click.Group):
    """Turns bad input into one line on stderr and exit code 2, never a traceback; loads a
    command's module only when the command line names it (:data:`COMMANDS`)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.commands = _Commands()

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)   # in the table's order, not sorted

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Commands"):
            formatter.write_dl([(name, help_line) for name, (_, help_line) in COMMANDS.items()])

    def shell_complete(self, ctx: click.Context, incomplete: str) -> list[CompletionItem]:
        """The command names from the table; options of the group as click completes them."""
        names = [CompletionItem(name, help=help_line) for name, (_, help_line) in COMMANDS.items()
                 if name.startswith(incomplete)]
        return names + click.Command.shell_complete(self, ctx, incomplete)

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        # SIGTERM as Ctrl-C wherever no loop holds the signals (pyrovae.interrupts): one line, exit
        # 130, not a silent death; restored after the command (the CLI also runs inside test processes)
        main_thread = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGTERM, signal.default_int_handler) if main_thread else None
        try:
            with library_log_on_stderr():
                self._main(args, prog_name, complete_var, **extra)
        finally:
            if main_thread:
                signal.signal(signal.SIGTERM, previous)

    def _main(self, args, prog_name, complete_var, **extra):
        argv = list(sys.argv[1:] if args is None else args)
        command = next((arg for arg in argv if arg in COMMANDS), None)
        smaller = f"rerun with a smaller {SMALLER.get(command, '--batch-size')}"
        try:
            with cli_audience():   # messages name options as flags, as the user typed them
                if "WORLD_SIZE" in os.environ:   # torchrun's: join the process group, once
                    from pyrovae.core import distributed
                    if distributed.launched_by_torchrun():
                        device = argv[argv.index("--device") + 1] if "--device" in argv[:-1] else "auto"
                        distributed.setup(device)
                code = super().main(args, prog_name or "pyrovae", complete_var, standalone_mode=False, **extra)
        except click.exceptions.NoArgsIsHelpError as error:
            click.echo(error.ctx.get_help(), err=True)
            leave(EXIT_USAGE)
        except click.UsageError as error:
            hint = f" (see pyrovae {error.ctx.info_name} --help)" if error.ctx and error.ctx.parent else ""
            fail(error.format_message().replace("\n", " ") + hint)
        except (UsageError, click.BadParameter) as error:
            fail(str(error).replace("\n", " "))
        except _raised("pyrovae.evaluation.driver", "EvaluationInterrupted") as error:   # finished points saved
            again = " ".join(shlex.quote(arg) for arg in argv + ([] if "--resume" in argv else ["--resume"]))
            hint = f"; continue with: pyrovae {again}" if error.path else ""
            fail(error.message + hint, EXIT_INTERRUPTED, kind="interrupted")
        except Interrupted as error:   # what was finished is saved; the message says how to go on
            fail(str(error), EXIT_INTERRUPTED, kind="interrupted")
        except _raised("pyrovae.training.loop", "NonFiniteLoss") as error:
            fail(str(error), 1)
        except click.Abort:
            fail("stopped before anything was saved", EXIT_INTERRUPTED, kind="interrupted")
        except MemoryError as error:
            fail(f"out of memory ({error}); {smaller}", 1)
        except RuntimeError as error:
            detail = str(error).splitlines()[0][:120]
            if _out_of_memory(error):
                fail(f"out of memory ({detail}); {smaller}", 1)
            if _peer_lost(error):   # the process that could say why is gone
                fail(f"another process of this distributed run stopped ({detail}); the run folder keeps its last "
                     "checkpoint: rerun the job (fit with --resume)", 1, every_rank=True)
            raise
        except OSError as error:   # e.g. a full disk mid-run: files are written atomically, the old ones stay
            where = f" on {error.filename!r}" if error.filename else ""
            again = {"fit": " (pyrovae fit --resume continues from the last checkpoint)",
                     "evaluate": " (with --resume, from the finished points)",
                     "certify": " (with --resume, from the finished points)"}.get(command, "")
            fail(f"{error.strerror or error}{where}; free space or fix permissions, then rerun{again}", 1)
        leave(code if isinstance(code, int) else 0, finished=True)


def _peer_lost(error: RuntimeError) -> bool:
    """A collective of a distributed run that failed because another rank died (gloo raises a
    bare RuntimeError, torch 2.14; nccl a DistBackendError)."""
    loaded = sys.modules.get("pyrovae.core.distributed")
    if loaded is None or not loaded.current().active:
        return False
    text = str(error)
    return isinstance(error, loaded.dist.DistError) or any(
        words in text for words in ("Connection closed by peer", "Connection reset by peer", "Broken pipe", "NCCL"))


def _out_of_memory(error: BaseException) -> bool:
    """torch's CPU and CUDA allocators' failures (torch.OutOfMemoryError is a RuntimeError)."""
    text = str(error)
    return "can't allocate memory" in text or "out of memory" in text.lower() or \
        type(error).__name__ == "OutOfMemoryError"


@click.group(cls=PyrovaeGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="pyrovae")
def cli() -> None:
    """pyrovae: a VAE written as a Pyro program; amortized vs mean-field VI; honest log p(x)."""


def main() -> None:
    cli()


if __name__ == "__main__":
    main()

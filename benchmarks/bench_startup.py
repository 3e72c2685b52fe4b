"""How long the command line takes to answer before any work: ``pyrovae --help``, a TAB
completion of the command names, and a command's own ``--help`` (which imports torch and the
library), each a fresh process, against ``python -c pass`` (the interpreter alone) and
``python -c "import torch"``; with ``--before PYROVAE``, another installation's ``pyrovae`` (e.g.
the main branch's venv, which imported torch up front) answering the same two. The variants run
in turn, ``--repeats`` times, and medians are reported; the goal of issue 24 is under 0.5 s for
the first two. What else was using the CPU at the start is recorded beside the numbers.

    python benchmarks/bench_startup.py --repeats 15 [--before ../main/.venv/bin/pyrovae]
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time

from common import log, machine, write_results

COMPLETE = {"_PYROVAE_COMPLETE": "bash_complete", "COMP_WORDS": "pyrovae ev", "COMP_CWORD": "1"}


def variants(before: str | None) -> dict[str, tuple[list[str], dict]]:
    pyrovae = shutil.which("pyrovae") or sys.exit("pyrovae is not installed in this environment")
    # the other installation's files are only read: no bytecode written into its tree
    other = {} if before is None else {
        "before: pyrovae --help": ([before, "--help"], {"PYTHONDONTWRITEBYTECODE": "1"}),
        "before: pyrovae ev<TAB>": ([before], {**COMPLETE, "PYTHONDONTWRITEBYTECODE": "1"})}
    return {
        "python -c pass": ([sys.executable, "-c", "pass"], {}),
        "pyrovae --help": ([pyrovae, "--help"], {}),
        "TAB: pyrovae ev<TAB>": ([pyrovae], COMPLETE),
        "pyrovae --version": ([pyrovae, "--version"], {}),
        "pyrovae fit --help": ([pyrovae, "fit", "--help"], {}),
        "python -c 'import torch'": ([sys.executable, "-c", "import torch"], {}),
        **other,
    }


def busy() -> list[str]:
    """The processes using the most CPU (``ps``), and ``uptime``: what ran beside the numbers."""
    ps = subprocess.run(["ps", "-eo", "pcpu,etime,args", "--sort=-pcpu"], capture_output=True, text=True)
    uptime = subprocess.run(["uptime"], capture_output=True, text=True)
    return [uptime.stdout.strip(), *(line[:140] for line in ps.stdout.splitlines()[:6])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--before", default=None, help="Another installation's pyrovae executable to time too.")
    parser.add_argument("--results", default=None, help="Folder for the result files [default: benchmarks/results].")
    args = parser.parse_args()
    runs = variants(args.before)
    beside = busy()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for name, (command, env) in runs.items():   # warm the page cache once
        subprocess.run(command, env={**os.environ, **env}, capture_output=True, check=False)
    for repeat in range(args.repeats):
        for name, (command, env) in runs.items():
            started = time.perf_counter()
            done = subprocess.run(command, env={**os.environ, **env}, capture_output=True, check=False)
            times[name].append(time.perf_counter() - started)
            if done.returncode != 0:
                sys.exit(f"{name} failed: {done.stderr.decode()[-400:]}")
        log(f"repeat {repeat + 1}/{args.repeats} done")
    medians = {name: statistics.median(values) for name, values in times.items()}
    torch_import = medians["python -c 'import torch'"]
    rows = [f"| {name} | {seconds:.3f} | {min(times[name]):.3f} | {seconds / torch_import:.2f} |"
            for name, seconds in medians.items()]
    table = ("| fresh process | median s | fastest s | / `import torch` |\n|---|---|---|---|\n" + "\n".join(rows) +
             f"\n\n{args.repeats} repeats, the variants in turn; goal: `pyrovae --help` and a completion under 0.5 s.")
    table += "\n\nAt the start (`uptime`, `ps` by CPU):\n\n" + "\n".join(f"    {line}" for line in beside)
    write_results("startup", {"machine": machine(), "repeats": args.repeats, "median_seconds": medians,
                              "seconds": times, "beside": beside, "before": args.before}, table, args.results)


if __name__ == "__main__":
    main()

"""``pyrovae show RUN_DIR [RUN_DIR ...]``: what runs recorded, side by side; the work is done by
:func:`pyrovae.runs.describe_run`."""
from __future__ import annotations

import click

from pyrovae.cli.main import short_help
from pyrovae.cli.options import emit, say
from pyrovae.runs import describe_run


def _latest(evaluations: list[dict], command: str, method: str | None = None) -> dict | None:
    found = [e for e in evaluations if e.get("command") == command and isinstance(e.get("summary"), dict)
             and (method is None or e["summary"].get("method") == method)]
    return found[-1] if found else None


def _number(value, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _families(config: dict, info: dict | None, program: dict | None) -> dict[str, object]:
    """Model, guide, likelihood and latent sizes: the config's families, or what a program of
    your own is, as its trace showed it when it was trained."""
    if config.get("model") != "custom" or not info:
        return {"model": config.get("model"), "guide": config.get("guide"), "likelihood": config.get("likelihood"),
                "latent dim": config.get("latent_dim")}
    observed = ", ".join(f"{name} ~ {info['distributions'].get(name, '?')}" for name in info["observed"])
    latent = ", ".join(f"{name} {'x'.join(map(str, shape)) or 'scalar'}" for name, shape in info["latent"].items())
    rows = {"model": info["model"], "guide": info["guide"], "likelihood": observed, "latent dim": latent or "-"}
    if program:
        rows["program"] = program.get("spec")
    return rows


def _marks(evaluation: dict, table: dict, epochs: int | None) -> tuple[list[str], str | None]:
    """What to beware of in an evaluation row: ``unreliable`` (k-hat said so), ``stale`` (of an
    earlier epoch than the run's last checkpoint, e.g. a best.pt); and which points it was of."""
    options = evaluation.get("options") or {}
    marks = ["unreliable"] if table.get("reliable") is False else []
    epoch = options.get("epoch")
    if isinstance(epoch, int) and isinstance(epochs, int) and epoch < epochs:
        marks.append(f"stale: epoch {epoch} of {epochs}")
    split = options.get("split") if options.get("split") in ("test", "train") else "test"
    return marks, (f"{split} n={table['n']}" if "n" in table else None)


def _rows(run: dict) -> tuple[dict[str, str], dict[str, tuple[list[str], str | None]]]:
    """The table's rows of a run, and the marks and points (:func:`_marks`) of its evaluation rows."""
    config, training, evaluations = run["config"], run["training"], run["evaluations"]
    marks: dict[str, tuple[list[str], str | None]] = {}
    rows = {**_families(config, run.get("program_info"), run.get("program")), "objective": config.get("elbo"),
            "epochs": training.get("epochs"), "minutes": _number(training.get("minutes")),
            "test ELBO": _number(training.get("test_elbo")) + (f" (q fitted to {training['test_elbo_points']} points)"
                                                               if "test_elbo_points" in training else ""),
            "best test ELBO (epoch)": (f"{training['best_test_elbo']:.2f} ({training['best_epoch']})"
                                       if "best_test_elbo" in training else "-")}
    if "best_validation_elbo" in training:
        rows["validation ELBO"] = _number(training["validation_elbo"])
        rows["best validation ELBO (epoch)"] = (f"{training['best_validation_elbo']:.2f} "
                                                f"({training['best_validation_epoch']}: best.pt)")
    last = [e for e in evaluations if e.get("checkpoint") == run["checkpoint"]]
    for group, of in ((last, ""), ([e for e in evaluations if e not in last], ", best.pt")):
        epochs = training.get("epochs") if not of else None   # best.pt is of an earlier epoch by design: not stale
        for method, label in (("is", "log p(x), IS"), ("ais", "log p(x), AIS")):
            found = _latest(group, "evaluate", method)
            if found:
                s, o = found["summary"], found["options"]
                how = f"K={o.get('k')}" if method == "is" else f"T={o.get('steps')}"
                rows[label + of] = (f"{s['log_likelihood']:.2f} ± {_number(s.get('log_likelihood_se'))} "
                                    f"({how}, n={s.get('n')})")
                marks[label + of] = _marks(found, s, epochs)
        compare = _latest(group, "compare")
        if compare and "test" in compare["summary"]:
            table = compare["summary"]["test"]
            for gap in ("amortization_gap", "optimization_gap", "approximation_gap"):   # an encoder's, or a mean-field run's rows'
                if gap in table:
                    label = gap.replace("_", " ") + of
                    rows[label] = f"{table[gap]:.2f} ± {table[gap + '_se']:.2f}"
                    marks[label] = _marks(compare, table, epochs)
        certified = _latest(group, "certify")
        if certified:
            s = certified["summary"]
            rows["log p(x), certified" + of] = (
                f"{s['log_likelihood']:.2f} ± {_number(s.get('log_likelihood_se'))} (T={s['steps']}, "
                f"gap {s['bdmc_gap']:.3f}, n={s['n']}{'' if s['certified'] else ', NOT certified'})")
            marks["log p(x), certified" + of] = _marks(certified, s, epochs)
        sandwich = _latest(group, "bdmc")
        if sandwich:
            rows["BDMC gap" + of] = f"{sandwich['summary']['gap']:.2f} (T={sandwich['summary']['steps']})"
    rows["evaluations of this checkpoint"] = len(evaluations)
    if run["other_evaluations"]:   # of a checkpoint the run no longer holds: not this model's numbers
        rows["of other checkpoints (not shown)"] = len(run["other_evaluations"])
    return {key: str(value) for key, value in rows.items()}, marks


def _marked(columns: list[tuple[dict[str, str], dict]]) -> list[dict[str, list[str]]]:
    """Each run's marks by row, with ``other points`` where the runs side by side were evaluated
    on different points (another split or number of them)."""
    points: dict[str, set] = {}
    for _, marks in columns:
        for label, (_, where) in marks.items():
            points.setdefault(label, set()).add(where)
    return [{label: flags + ([f"other points: {where}"] if len(points[label]) > 1 else [])
             for label, (flags, where) in marks.items()} for _, marks in columns]


@click.command(short_help=short_help("show"))
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path())
def show(run_dirs: tuple[str, ...]) -> None:
    """The config, training summary and the recorded evaluations of RUN_DIR(s): JSON on stdout,
    a table on stderr, one column per run (e.g. an amortized run beside a mean-field one).
    Evaluations of a checkpoint the run no longer holds (replaced by --overwrite, or trained further
    by --resume) are counted in the table, not shown, and listed in the JSON's other_evaluations.
    A number to beware of is marked, in the table and in each run's "flags": unreliable (k-hat), stale
    (of an earlier epoch than the last checkpoint), other points (than the runs beside it)."""
    runs = [describe_run(run_dir) for run_dir in run_dirs]
    rows_and_marks = [_rows(run) for run in runs]
    for run, (rows, _), flags in zip(runs, rows_and_marks, _marked(rows_and_marks)):
        run["flags"] = {label: marks for label, marks in flags.items() if marks and label in rows}
        for label, marks in run["flags"].items():   # in the table too, where the number is
            rows[label] += f" [{'; '.join(marks)}]"
    columns = [rows for rows, _ in rows_and_marks]
    labels = list(dict.fromkeys(label for column in columns for label in column))
    names = [run_dir.rstrip("/").split("/")[-1] or run_dir for run_dir in run_dirs]
    widths = [max(len(name), *(len(column.get(label, "-")) for label in labels)) for name, column in zip(names, columns)]
    first = max(len(label) for label in labels)
    lines = ["  ".join([" " * first, *(name.ljust(width) for name, width in zip(names, widths))])]
    for label in labels:
        lines.append("  ".join([label.ljust(first), *(column.get(label, "-").ljust(width)
                                                      for column, width in zip(columns, widths))]))
    say("\n".join(line.rstrip() for line in lines))
    emit({"runs": runs})

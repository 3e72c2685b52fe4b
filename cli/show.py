"""``pyrovae show RUN_DIR [RUN_DIR ...]``: what runs recorded, side by side; the work is done by
:func:`pyrovae.runs.describe_run`."""
from __future__ import annotations

import click

from pyrovae.cli.options import emit, say


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


def _rows(run: dict) -> dict[str, str]:
    config, training, evaluations = run["config"], run["training"], run["evaluations"]
    rows = {**_families(config, run.get("program_info"), run.get("program")), "objective": config.get("elbo"),
            "epochs": training.get("epochs"), "minutes": _number(training.get("minutes")),
            "test ELBO": _number(training.get("test_elbo")),
            "best test ELBO (epoch)": (f"{training['best_test_elbo']:.2f} ({training['best_epoch']})"
                                       if "best_test_elbo" in training else "-")}
    for method, label in (("is", "log p(x), IS"), ("ais", "log p(x), AIS")):
        found = _latest(evaluations, "evaluate", method)
        if found:
            s, o = found["summary"], found["options"]
            how = f"K={o.get('k')}" if method == "is" else f"T={o.get('steps')}"
            rows[label] = f"{s['log_likelihood']:.2f} ± {_number(s.get('log_likelihood_se'))} ({how}, n={s.get('n')})"
    compare = _latest(evaluations, "compare")
    if compare and "test" in compare["summary"]:
        table = compare["summary"]["test"]
        rows["amortization gap"] = f"{table['amortization_gap']:.2f} ± {table['amortization_gap_se']:.2f}"
        rows["approximation gap"] = f"{table['approximation_gap']:.2f} ± {table['approximation_gap_se']:.2f}"
    certified = _latest(evaluations, "certify")
    if certified:
        s = certified["summary"]
        rows["log p(x), certified"] = (f"{s['log_likelihood']:.2f} ± {_number(s.get('log_likelihood_se'))} (T={s['steps']}, "
                                       f"gap {s['bdmc_gap']:.3f}, n={s['n']}{'' if s['certified'] else ', NOT certified'})")
    sandwich = _latest(evaluations, "bdmc")
    if sandwich:
        rows["BDMC gap"] = f"{sandwich['summary']['gap']:.2f} (T={sandwich['summary']['steps']})"
    rows["evaluations of this checkpoint"] = len(evaluations)
    if run["other_evaluations"]:   # of a checkpoint the run no longer holds: not this model's numbers
        rows["of other checkpoints (not shown)"] = len(run["other_evaluations"])
    return {key: str(value) for key, value in rows.items()}


@click.command()
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path())
def show(run_dirs: tuple[str, ...]) -> None:
    """The config, training summary and the recorded evaluations of RUN_DIR(s): JSON on stdout,
    a table on stderr, one column per run (e.g. an amortized run beside a mean-field one).
    Evaluations of a checkpoint the run no longer holds (replaced by --overwrite, or trained further
    by --resume) are counted in the table, not shown, and listed in the JSON's other_evaluations."""
    from pyrovae.runs import describe_run
    runs = [describe_run(run_dir) for run_dir in run_dirs]
    columns = [_rows(run) for run in runs]
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

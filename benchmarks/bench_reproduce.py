"""The papers' tables beside pyrovae's (issue 23): Burda et al. (2016)'s one- and two-layer VAEs
and Cremer et al. (2018)'s FFG and flow recipes, trained within a CPU budget, each number
certified.

For each preset (``--presets``, default all four; benchmarks/reproduce/SETTINGS.md says where in
the papers' code each setting comes from):

1. train it for ``--minutes`` (default 60; the preset's 3,280 epochs bound it too, Burda et al.'s
   schedule compressed onto whichever ends first) into ``--runs``/<preset>/ (default
   benchmarks/reproduce/), the checkpoint selected on the 400 held-out training rows (best.pt);
2. on the first ``--limit`` test points (all 10,000 by default): log p(x) by importance sampling
   from the encoder, K = ``--k`` (5000), with its diagnostics, and the certified AIS of
   ``pyrovae certify`` (BDMC chooses T; Wu et al. 2017's protocol);
3. for the Cremer recipes, the gap table (``pyrovae compare``) on the first ``--gap-limit`` (1000)
   points of ``--gap-split`` (their code's: the first 1000 training points), log p̂ by AIS from
   q* as they did;

and writes benchmarks/results/reproduce.{md,json} (``--results``) with the papers' numbers
beside: the presets of this run, and those of earlier runs kept from reproduce.json (one preset a
session; each row says its CPU and when it finished). Each step is the library call its command makes (``evaluate_run``, ``certify_run``,
``compare_run``): the results are recorded in each run's evaluations.jsonl, as the CLI would.
``--evaluate-only`` skips training (the runs kept in ``--runs``). Run it alone (``flock -x
/work/bench.lock ...`` on the shared machine): it records the load at the start and the end.

    python benchmarks/bench_reproduce.py --data-dir ../shared/data --minutes 60 --threads 2

Smoke mode (a minute or two: a few training rows, seconds of training, tiny estimators)::

    python benchmarks/bench_reproduce.py --data-dir ../shared/data --smoke --minutes 0.05 \
        --train-limit 1000 --limit 20 --k 50 --gap-limit 10 --runs /tmp/reproduce --results /tmp/reproduce
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (ROOT, command_line, log, machine, mnist, require_data_dir, results_dir,  # noqa: E402
                    write_results)

from pyrovae import runs  # noqa: E402
from pyrovae.config import PRESETS, FitConfig  # noqa: E402
from pyrovae.evaluation.certify import MIN_BDMC_POINTS, CertifySettings  # noqa: E402
from pyrovae.evaluation.settings import ISSettings  # noqa: E402
from pyrovae.inference.compare import CompareSettings  # noqa: E402
from pyrovae.workflows import fit, load_run  # noqa: E402
from pyrovae.workflows.evaluating import (CertifyRunSettings, CompareRunSettings, EvaluateSettings,  # noqa: E402
                                          RunFolder, certify_run, compare_run, evaluate_run)

PRESET_NAMES = ("burda-1layer", "burda-2layer", "cremer-ffg", "cremer-flow")
GAPPED = ("cremer-ffg", "cremer-flow")   # the recipes of Cremer et al.'s gap table
# The papers' numbers, nats (MNIST, dynamically binarized; log p̂ by IS, K = 5000, all test points).
# Burda et al. 2016, Table 1 (arXiv:1509.00519v4), 3,280 epochs: the VAE (k = 1) and the IWAE
# (k = 50) at one and two stochastic layers. Cremer et al. 2018, Table 2 (arXiv:1801.03558): not
# in either repository, and not verified here (no copy of the paper on this machine): None until
# someone reads them off the paper.
PAPER = {
    "burda-1layer": {"source": "Burda et al. 2016, Table 1: VAE, k=1, one stochastic layer", "log_px": -86.76,
                     "iwae_k50_log_px": -84.78, "epochs": 3280},
    "burda-2layer": {"source": "Burda et al. 2016, Table 1: VAE, k=1, two stochastic layers", "log_px": -85.33,
                     "iwae_k50_log_px": -82.90, "epochs": 3280},
    "cremer-ffg": {"source": "Cremer et al. 2018, Table 2: MNIST, q_FFG", "log_px": None, "elbo_optimized": None,
                   "elbo_q": None, "approximation_gap": None, "amortization_gap": None, "epochs": 3280,
                   "verified": False},
    "cremer-flow": {"source": "Cremer et al. 2018, Table 2: MNIST, q_Flow", "log_px": None, "elbo_optimized": None,
                    "elbo_q": None, "approximation_gap": None, "amortization_gap": None, "epochs": 3280,
                    "verified": False},
}
KEPT = (runs.CONFIG, runs.CHECKPOINT, "best.pt")   # what a kept run needs to be re-evaluated


@dataclass(frozen=True, kw_only=True)
class LimitedFolder(RunFolder):
    """A run folder loaded with the benchmark's own data (a smoke run's first ``--train-limit``
    training rows), so the test points and the held-out rows are those the run was trained with."""

    data: object = None

    def load(self):
        return load_run(self.path, self.device, self.data_dir, data=self.data, checkpoint=self.checkpoint)


def load_now() -> dict:
    top = subprocess.run(["ps", "-eo", "pcpu,etime,args", "--sort=-pcpu"], stdout=subprocess.PIPE, text=True).stdout
    return {"load_average_1min": round(os.getloadavg()[0], 2),
            "busiest_processes": [line[:160] for line in top.splitlines()[1:6]]}


def protocol(args) -> tuple[ISSettings, CertifySettings, CompareSettings]:
    """The estimators' settings: the commands' defaults (K from --k), or in --smoke tiny ones
    that exercise every stage in seconds (their numbers mean nothing)."""
    importance = ISSettings(k=args.k)
    if not args.smoke:
        return (importance, CertifySettings(is_k=args.k),
                CompareSettings(log_px="ais", ais_steps=args.gap_ais_steps, k=args.k))
    return (importance,
            CertifySettings(is_k=args.k, bdmc_n=MIN_BDMC_POINTS, steps=5, max_steps=10, target_gap=1e6, chains=2,
                            check_points=5, tune_points=5),
            CompareSettings(log_px="ais", ais_steps=5, chains=2, k=args.k, steps=20, refine_steps=0, batch_size=50))


def train(name: str, run_dir: Path, args, root: str, dataset) -> dict:
    config = FitConfig(**{**PRESETS[name], "minutes": args.minutes, "data_dir": root, "device": args.device})
    log(f"{name}: training for at most {args.minutes:g} minutes / {config.epochs} epochs into {run_dir} ...")
    started = time.perf_counter()
    result = fit(config, run_dir, overwrite=True, progress=False, data=dataset)
    result["wall_minutes"] = round((time.perf_counter() - started) / 60, 2)
    return result


def curve(run_dir: Path) -> list[dict]:
    """Validation and test ELBO against minutes trained, from metrics.jsonl."""
    points, seconds = [], 0.0
    for m in runs.read_jsonl(run_dir / runs.METRICS):
        seconds += m.get("train_seconds", 0.0) + m.get("eval_seconds", 0.0)
        points.append({"epoch": m["epoch"], "minutes": round(seconds / 60, 2), "lr": m.get("lr"),
                       "validation_elbo": m.get("validation_elbo"), "test_elbo": m.get("test_elbo")})
    return points


def evaluate(name: str, run_dir: Path, args, root: str, dataset) -> dict:
    importance, certifying, comparing = protocol(args)
    folder = LimitedFolder(path=run_dir, checkpoint="best", device=args.device, data_dir=root, data=dataset)
    out: dict = {}
    log(f"{name}: IS, K={importance.k}, on {args.limit or 'all'} test points ...")
    out["is"] = evaluate_run(folder, EvaluateSettings(limit=args.limit), importance=importance)
    log(f"{name}: certify on {args.limit or 'all'} test points ...")
    out["certify"] = certify_run(folder, CertifyRunSettings(limit=args.limit), certify=certifying)
    if name in GAPPED:
        log(f"{name}: the gap table on the first {args.gap_limit} {args.gap_split} points, AIS log p̂ ...")
        out["compare"] = compare_run(folder, CompareRunSettings(limit=args.gap_limit, split=args.gap_split),
                                     compare=comparing)
    return out


def row(name: str, record: dict) -> str:
    paper, fitted, is_, cert = PAPER[name], record["fit"], record["is"], record["certify"]
    shown = "n/a (not verified)" if paper["log_px"] is None else f"{paper['log_px']:.2f}"
    khat = "n/a" if is_.get("khat_frac_gt_0_7") is None else f"{is_['khat_frac_gt_0_7']:.0%}"
    return (f"| {name} | {shown} ({paper['epochs']} epochs) | {is_['log_likelihood']:.2f} ± "
            f"{is_['log_likelihood_se']:.2f} (K={is_['k']}, k-hat > 0.7: {khat}) | "
            f"{cert['log_likelihood']:.2f} ± {cert['log_likelihood_se']:.2f} (T={cert['steps']}, "
            f"{'certified' if cert['certified'] else 'NOT certified'}) | {is_['n']} | {fitted['epochs']} epochs "
            f"(best {fitted.get('best_validation_epoch')}), {fitted['train_minutes']:.1f} min"
            f"{machine_note(record)} |")


def machine_note(record: dict) -> str:
    """Where and when a preset's row was measured (rows of several sessions share the table)."""
    where = record.get("machine")
    return f"; {where['cpu']}, {where['finished']}" if where else ""


def gap_tables(record: dict) -> dict[str, dict]:
    """A Cremer recipe's gap tables by split (compare's result also holds the run's settings)."""
    return {split: table for split, table in record["compare"].items()
            if isinstance(table, dict) and "log_likelihood" in table}


def gap_rows(name: str, record: dict) -> list[str]:
    out = []
    for split, table in gap_tables(record).items():
        cells = " | ".join(f"{table[key]:.2f} ± {table[key + '_se']:.2f}" for key in
                           ("log_likelihood", "elbo_optimized", "elbo_q", "approximation_gap", "amortization_gap"))
        out.append(f"| {name} (pyrovae, {table['n']} {split} points, AIS T={table['ais_steps']}) | {cells} |")
    paper = PAPER[name]
    cells = " | ".join("n/a" if paper[key] is None else f"{paper[key]:.2f}" for key in
                       ("log_px", "elbo_optimized", "elbo_q", "approximation_gap", "amortization_gap"))
    out.append(f"| {name} (paper{'' if paper.get('verified', True) else ', not verified'}) | {cells} |")
    return out


def report(presets: dict) -> str:
    """reproduce.md's tables: the papers' numbers beside pyrovae's, the gap tables, the training
    curves (where a goal is not reached: how far the budget went, and what the papers' would take)."""
    names = [name for name in PRESET_NAMES if name in presets]
    lines = ["| recipe | paper: log p(x) | pyrovae: IS log p̂ (K) | pyrovae: certified AIS | test points | budget |",
             "|---|---|---|---|---|---|", *(row(name, presets[name]) for name in names)]
    lines += layers(presets)
    gapped = [name for name in names if name in GAPPED]
    if gapped:
        lines += ["", "| gaps (nats) | log p̂(x) | L[q*] | L[q] | approximation gap | amortization gap |",
                  "|---|---|---|---|---|---|",
                  *(line for name in gapped for line in gap_rows(name, presets[name]))]
        lines += gap_pattern(presets)
    lines += ["", "The curves: the ELBO of the 400 held-out training rows (what selects best.pt) at the last "
              "epoch ended by each minute of training (test ELBO in reproduce.json's `curve`), and the "
              "paper's 3,280 epochs at this run's pace:", "",
              "| recipe | " + " | ".join(f"{minute} min" for minute in MILESTONES) + " | s / epoch | 3,280 epochs would take |",
              "|---|" + "---|" * (len(MILESTONES) + 2), *(curve_row(name, presets[name]) for name in names)]
    lines += ["", "Kept runs (MB): " + "; ".join(f"{name}: " + ", ".join(f"{f} {mb}" for f, mb in
                                                                     presets[name]["sizes_mb"].items())
                                             for name in names)]
    return "\n".join(lines)


def gap_pattern(presets: dict) -> list[str]:
    """Cremer et al.'s finding at their architecture: the flow's approximation gap below the FFG's
    (and its amortization gap not below). The SE of a difference treats the two runs' gaps as
    independent (they are on the same points: the paired SE would be smaller)."""
    ffg, flow = presets.get("cremer-ffg"), presets.get("cremer-flow")
    if ffg is None or flow is None:
        return []
    cells, flows = [], gap_tables(flow)
    for split, table in gap_tables(ffg).items():
        other = flows.get(split)
        if other is None:
            continue
        for key, what in (("approximation_gap", "approximation"), ("amortization_gap", "amortization")):
            difference = other[key] - table[key]
            se = math.hypot(other[key + "_se"], table[key + "_se"])
            cells.append(f"{what} gap {difference:+.2f} ± {se:.2f} ({table['n']} {split} points)")
    if not cells:
        return []
    return ["", "The flow minus the FFG (nats; Cremer et al.: the flow's approximation gap is the smaller): "
            + ", ".join(cells) + "."]


MILESTONES = (1, 5, 10, 20, 30, 45, 60)   # minutes of training at which the curve is shown


def curve_row(name: str, record: dict) -> str:
    cells, ended = [], record["curve"][-1]["minutes"] if record["curve"] else 0.0
    for before, minute in zip((0, *MILESTONES), MILESTONES):
        reached = [point for point in record["curve"] if point["minutes"] <= minute
                   and point.get("validation_elbo") is not None]
        shown = reached and (before == 0 or before < ended)   # a run that ended earlier shows "–"
        cells.append(f"{reached[-1]['validation_elbo']:.2f} (epoch {reached[-1]['epoch']})" if shown else "–")
    fitted = record["fit"]
    per_epoch = 60 * fitted["train_minutes"] / fitted["epochs"]
    return (f"| {name} | " + " | ".join(cells) + f" | {per_epoch:.1f} | "
            f"{PAPER[name]['epochs'] * per_epoch / 3600:.1f} h |")


def layers(presets: dict) -> list[str]:
    """Burda et al.'s second goal: two stochastic layers ahead of one at the same budget. The SE
    of the difference treats the two runs' estimates as independent (both are on the same test
    points, whose difficulties correlate: the paired SE would be smaller)."""
    one, two = presets.get("burda-1layer"), presets.get("burda-2layer")
    if one is None or two is None:
        return []
    cells = []
    for key, what in (("is", "IS"), ("certify", "certified AIS")):
        difference = two[key]["log_likelihood"] - one[key]["log_likelihood"]
        se = math.hypot(two[key]["log_likelihood_se"], one[key]["log_likelihood_se"])
        cells.append(f"{what} {difference:+.2f} ± {se:.2f}")
    paper = PAPER["burda-2layer"]["log_px"] - PAPER["burda-1layer"]["log_px"]
    return ["", f"Two stochastic layers minus one (nats; the paper: {paper:+.2f}): " + ", ".join(cells) + "."]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--presets", default=",".join(PRESET_NAMES))
    parser.add_argument("--minutes", type=float, default=60.0, help="Training budget of each recipe.")
    parser.add_argument("--train-limit", type=int, default=None, help="Train on the first N training rows (smoke).")
    parser.add_argument("--limit", type=int, default=None, help="Test points for IS and certify [default: all].")
    parser.add_argument("--k", type=int, default=5000, help="Importance samples per point.")
    parser.add_argument("--gap-limit", type=int, default=1000, help="Points of the gap table.")
    parser.add_argument("--gap-split", default="train", choices=("train", "test", "both"),
                        help="Whose points the gap table uses (their code: the first 1000 training points).")
    parser.add_argument("--gap-ais-steps", type=int, default=1000, help="AIS T of log p̂ in the gap table.")
    parser.add_argument("--smoke", action="store_true", help="Tiny estimator settings (certify, compare).")
    parser.add_argument("--evaluate-only", action="store_true", help="Evaluate the runs already in --runs.")
    parser.add_argument("--runs", default=str(ROOT / "benchmarks" / "reproduce"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--results", default=None)
    parser.add_argument("--report-only", action="store_true",
                        help="Rewrite reproduce.md from reproduce.json (no training, no evaluation).")
    args = parser.parse_args()
    if args.report_only:
        results = json.loads((results_dir(args.results) / "reproduce.json").read_text())
        write_results("reproduce", results, report(results["presets"]), args.results,
                      command="see each row's machine and command in reproduce.json")
        return
    names = [name.strip() for name in args.presets.split(",") if name.strip()]
    unknown = [name for name in names if name not in PAPER]
    if unknown:
        log(f"unknown preset {unknown[0]!r}; use {', '.join(PRESET_NAMES)}")
        sys.exit(2)
    root = require_data_dir(args.data_dir)
    if args.threads:
        torch.set_num_threads(args.threads)
    dataset = mnist(root, args.train_limit)
    results: dict = {"machine": {**machine(), **load_now()}, "presets": {}, "paper": PAPER,
                     "settings": {key: value for key, value in vars(args).items() if key != "data_dir"}}
    for name in names:
        run_dir = Path(args.runs) / name
        record: dict = {}
        if not args.evaluate_only:
            record["training"] = train(name, run_dir, args, root, dataset)
        metrics = runs.read_jsonl(run_dir / runs.METRICS)
        scored = [m for m in metrics if m.get("validation_elbo") is not None]
        best = max(scored, key=lambda m: m["validation_elbo"]) if scored else {}   # the first best: best.pt's
        record["fit"] = {"epochs": len(metrics),
                         "train_minutes": sum(m["train_seconds"] + m.get("eval_seconds", 0.0) for m in metrics) / 60,
                         "best_validation_epoch": best.get("epoch"),
                         "best_validation_elbo": best.get("validation_elbo")}
        record["curve"] = curve(run_dir)
        record["sizes_mb"] = {file: round((run_dir / file).stat().st_size / 2**20, 2) for file in KEPT
                              if (run_dir / file).exists()}
        record.update(evaluate(name, run_dir, args, root, dataset))
        record["machine"] = {"cpu": results["machine"]["cpu"], "finished": time.strftime("%Y-%m-%d %H:%M UTC",
                                                                                     time.gmtime()),
                             "command": command_line()}
        results["presets"][name] = record
    results["machine_at_the_end"] = load_now()
    # one preset a session (each takes an hour or two): the presets evaluated earlier are kept
    earlier = results_dir(args.results) / "reproduce.json"
    if earlier.exists():
        kept = json.loads(earlier.read_text()).get("presets", {})
        results["presets"] = {**{k: v for k, v in kept.items() if k not in names}, **results["presets"]}
    write_results("reproduce", results, report(results["presets"]), args.results)


if __name__ == "__main__":
    main()

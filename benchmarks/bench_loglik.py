"""The MNIST log-likelihood run: train a documented recipe, then estimate test log p(x).

Recipes are pyrovae presets (pyrovae/config.py, PRESETS):

- ``mnist-elbo``: 784-500-500-50 MLPs, Bernoulli, dynamic binarization, TraceMeanField_ELBO
  (analytic KL), batch 128, Adam 1e-3 decayed by 0.99 per epoch, KL warm-up over 10 epochs.
- ``mnist-iwae``: the same networks trained with the IWAE bound, K=5, batch 128.
- ``iwae-paper``: Burda et al. (2016)'s sizes 784-200-200-50, the IWAE bound with K=50,
  batch 20, Adam 1e-3 decayed by 0.99 per epoch. ``--particles`` overrides K.
- ``mnist-two-layer``: Burda et al.'s two stochastic layers, x -200-200- z1 (100) -100-100- z2 (50),
  trained with the ELBO (Monte Carlo KL: p(z1 | z2) has no closed form against q), batch 128,
  Adam 1e-3 decayed by 0.99 per epoch, KL warm-up over 10 epochs.

Training stops after the epoch that passes --minutes (or --epochs); then the test set (10,000
points, or --limit) is evaluated with K=5000 importance samples from the guide
(``estimate_log_likelihood``, the heap tuned as ``pyrovae evaluate`` tunes it). References,
Burda et al. (2016), Table 1, MNIST, after 3,280 epochs, K=5000:

    one stochastic layer:   VAE -86.76   IWAE (k=50) -84.78
    two stochastic layers:  VAE -85.33   IWAE (k=50) -82.90

One recipe writes loglik_<recipe>.{json,md,png}; ``--compare-recipes a,b`` trains and evaluates
each recipe in turn with the same --minutes and writes loglik_<a>_vs_<b>.{json,md,png}: the
two-layer model's test log p(x) next to the one-layer model's at equal training time.
``--ais-steps T`` also estimates log p(x) of the same test points by AIS (``pyrovae evaluate
--method ais``), reported beside the IS value with their paired difference.

    python benchmarks/bench_loglik.py --data-dir ../shared/data --recipe mnist-elbo --minutes 60
    python benchmarks/bench_loglik.py --data-dir ../shared/data --compare-recipes mnist-elbo,mnist-two-layer \\
        --minutes 60 [--threads 1]
    options: [--epochs 3280] [--particles K] [--k 5000] [--limit N] [--train-limit N] [--threads N]
             [--ais-steps T [--ais-chains C] [--ais-leapfrog L]]
             [--run-dir DIR | --runs DIR] [--evaluate-only] [--results DIR]

Smoke run: ``--recipe mnist-two-layer --minutes 0.05 --epochs 1 --train-limit 1000 --limit 20 --k 50
--runs /tmp/runs --results /tmp/bench``.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import log, machine, mnist, require_data_dir, results_dir, write_results  # noqa: E402

from pyrovae import runs  # noqa: E402
from pyrovae.config import PRESETS, FitConfig  # noqa: E402
from pyrovae.core import heap
from pyrovae.evaluation import diagnostics  # noqa: E402
from pyrovae.evaluation.ais import estimate_log_likelihood_ais  # noqa: E402
from pyrovae.evaluation.importance import estimate_log_likelihood  # noqa: E402
from pyrovae.workflows import fit, load_run  # noqa: E402

# Burda, Grosse & Salakhutdinov (2016), Table 1 (MNIST, K=5000 test log-likelihood estimates)
BURDA = {("one", "VAE"): -86.76, ("one", "IWAE k=50"): -84.78, ("two", "VAE"): -85.33, ("two", "IWAE k=50"): -82.90}
ANCHORS = {"mnist-elbo": ("one", "VAE"), "mnist-iwae": ("one", "IWAE k=50"), "iwae-paper": ("one", "IWAE k=50"),
           "mnist-two-layer": ("two", "VAE")}


def anchor(recipe: str) -> dict | None:
    if recipe not in ANCHORS:
        return None
    layers, method = ANCHORS[recipe]
    return {"value": BURDA[layers, method], "layers": layers, "method": method}


def plot_elbo_against_minutes(curves: dict[str, list[dict]], path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    figure, axes = plt.subplots(figsize=(6, 4))
    lowest = 0.0
    for recipe, metrics in curves.items():
        minutes, elapsed = [], 0.0
        for record in metrics:
            elapsed += record["train_seconds"] + record.get("eval_seconds", 0.0)
            minutes.append(elapsed / 60)
        label = "" if len(curves) == 1 else f"{recipe}: "
        line, = axes.plot(minutes, [m["test_elbo"] for m in metrics], label=f"{label}test ELBO")
        axes.plot(minutes, [m["train_elbo"] for m in metrics], label=f"{label}train ELBO", alpha=0.5,
                  color=line.get_color(), linestyle="--")
        lowest = min([lowest, *(m["test_elbo"] for m in metrics)])
    axes.set_xlabel("minutes of training")
    axes.set_ylabel("nats per image")
    axes.set_ylim(max(-130, lowest - 1), None)
    axes.legend()
    axes.set_title(title)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def train_and_evaluate(recipe_name: str, args, root: str, run_dir: Path, dataset) -> tuple[dict, list[dict]]:
    """Train ``recipe_name`` into ``run_dir`` (unless --evaluate-only), then estimate test log p(x)."""
    recipe = dict(PRESETS[recipe_name], data_dir=root, epochs=args.epochs, minutes=args.minutes)
    if args.particles:
        recipe["particles"] = args.particles
    config = FitConfig(**recipe)
    started = time.perf_counter()
    if not args.evaluate_only:
        log(f"{recipe_name}: training for at most {args.minutes:g} minutes / {args.epochs} epochs into {run_dir} ...")
        fit(config, run_dir, overwrite=True, progress=False, data=dataset)
    fit_minutes = (time.perf_counter() - started) / 60
    metrics = runs.read_jsonl(run_dir / runs.METRICS)
    run = load_run(run_dir, "cpu", root, data=dataset)
    log(f"{recipe_name}: estimating test log p(x) with K={args.k} ...")
    started = time.perf_counter()
    result = estimate_log_likelihood(run.vae, run.data.test[0][:args.limit], k=args.k, seed=0, progress=True)
    summary = result.summary()
    eval_minutes = (time.perf_counter() - started) / 60
    train_minutes = sum(m["train_seconds"] + m.get("eval_seconds", 0.0) for m in metrics) / 60
    ais = None
    if args.ais_steps:
        log(f"{recipe_name}: AIS on the same points, T={args.ais_steps}, C={args.ais_chains}, L={args.ais_leapfrog} ...")
        started = time.perf_counter()
        annealed = estimate_log_likelihood_ais(run.vae, run.data.test[0][:args.limit], steps=args.ais_steps,
                                               chains=args.ais_chains, leapfrog=args.ais_leapfrog, seed=0,
                                               progress=True, is_k=0)
        ais = annealed.summary()
        # paired over the same points: the SE of the difference is far below either estimate's SE
        ais["minus_is"], ais["minus_is_se"] = diagnostics.mean_and_se(annealed.log_px - result.log_px)
        ais["minutes"] = (time.perf_counter() - started) / 60
    return {
        "recipe": recipe_name, "config": run.config.to_dict(), "run_dir": str(run_dir), "epochs": len(metrics),
        "train_minutes": train_minutes, "fit_minutes": fit_minutes,
        "eval_minutes": eval_minutes, "ais": ais,
        "test_log_likelihood": summary["log_likelihood"], "test_log_likelihood_se": summary["log_likelihood_se"],
        "test_elbo": summary["elbo"], "iwae_bounds": summary["iwae_bounds"], "k": summary["k"], "n": summary["n"],
        "khat_frac_gt_0_7": summary["khat_frac_gt_0_7"], "khat_frac_gt_0_5": summary["khat_frac_gt_0_5"],
        "active_units": summary["active_units"], "active_units_by_site": summary["active_units_by_site"],
        "warning": summary["warning"], "last_test_elbo_of_training": metrics[-1].get("test_elbo") if metrics else None,
        "anchor": anchor(recipe_name)}, metrics


def pct(value: float | None) -> str:
    return "–" if value is None else f"{value:.1%}"


def markdown(rows: list[dict], minutes: float) -> str:
    lines = [f"Test log p(x) on MNIST after at most {minutes:g} minutes of training per recipe.", "",
             "| recipe | layers | epochs | train minutes | test log p(x) | SE | test ELBO | K | n | k-hat > 0.7 "
             "| active units | eval minutes | Burda et al. |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        a = r["anchor"]
        layers = "two" if r["config"].get("model") == "two-layer" else "one"
        units = r["active_units_by_site"] or r["active_units"]
        units = ", ".join(f"{site} {n}" for site, n in units.items()) if isinstance(units, dict) else units
        reference = "–" if a is None else f"{a['value']:.2f} ({a['method']})"
        lines.append(f"| `{r['recipe']}` | {layers} | {r['epochs']} | {r['train_minutes']:.1f} "
                     f"| {r['test_log_likelihood']:.2f} | {r['test_log_likelihood_se'] or float('nan'):.2f} "
                     f"| {r['test_elbo']:.2f} | {r['k']} | {r['n']} | {pct(r['khat_frac_gt_0_7'])} | {units} "
                     f"| {r['eval_minutes']:.1f} | {reference} |")
    lines += ["", "Burda, Grosse & Salakhutdinov (2016), Table 1, MNIST test log p(x) (K=5000) after 3,280 epochs:", "",
              "| stochastic layers | VAE | IWAE (k=50) |", "|---|---|---|",
              f"| one (784-200-200-50) | {BURDA['one', 'VAE']:.2f} | {BURDA['one', 'IWAE k=50']:.2f} |",
              f"| two (784-200-200-100-100-100-50) | {BURDA['two', 'VAE']:.2f} | {BURDA['two', 'IWAE k=50']:.2f} |", "",
              "Train minutes: training and per-epoch evaluation (metrics.jsonl). The estimate is a stochastic lower "
              "bound of log p(x); with many points at k-hat > 0.7 it is likely an underestimate."]
    annealed = [r for r in rows if r["ais"]]
    if annealed:
        lines += ["", "AIS on the same test points (forward, from the encoder's q; sigmoid schedule, HMC):", "",
                  "| recipe | T | chains | leapfrog | AIS log p(x) | SE | AIS − IS (paired) | acceptance | minutes |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in annealed:
            a = r["ais"]
            lines.append(f"| `{r['recipe']}` | {a['steps']} | {a['chains']} | {a['leapfrog']} "
                         f"| {a['log_likelihood']:.2f} | {a['log_likelihood_se']:.2f} "
                         f"| {a['minus_is']:+.2f} ± {a['minus_is_se']:.2f} | {a['accept_rate_mean']:.2f} "
                         f"| {a['minutes']:.1f} |")
    warnings = [f"`{r['recipe']}`: {r['warning']}" for r in rows if r["warning"]]
    if warnings:
        lines += ["", *warnings]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--recipe", choices=sorted(PRESETS), default="mnist-elbo")
    parser.add_argument("--compare-recipes", default=None, metavar="A,B",
                        help="Comma list of recipes to train and evaluate in turn, each for --minutes.")
    parser.add_argument("--minutes", type=float, default=60.0, help="Training budget per recipe.")
    parser.add_argument("--epochs", type=int, default=3280, help="At most this many epochs.")
    parser.add_argument("--particles", type=int, default=None, help="Override the recipe's K.")
    parser.add_argument("--k", type=int, default=5000, help="Importance samples for log p(x).")
    parser.add_argument("--limit", type=int, default=None, help="Evaluate only the first LIMIT test points.")
    parser.add_argument("--ais-steps", type=int, default=0,
                        help="Also estimate log p(x) of the same points by AIS with this many steps (0: no AIS).")
    parser.add_argument("--ais-chains", type=int, default=16)
    parser.add_argument("--ais-leapfrog", type=int, default=5)
    parser.add_argument("--train-limit", type=int, default=None, help="Train on the first N training points (smoke runs).")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice).")
    parser.add_argument("--run-dir", default=None, help="One recipe: its run folder (default: <runs>/<recipe>).")
    parser.add_argument("--runs", default=None, help="Folder of the runs, one per recipe (default: benchmarks/runs).")
    parser.add_argument("--evaluate-only", action="store_true", help="Skip training; evaluate the existing runs.")
    parser.add_argument("--results", default=None, help="Folder for loglik_*.{json,md,png} (default benchmarks/results).")
    args = parser.parse_args()
    recipes = [args.recipe]
    if args.compare_recipes:
        recipes = [name.strip() for name in args.compare_recipes.split(",") if name.strip()]
        unknown = [name for name in recipes if name not in PRESETS]
        if unknown or len(recipes) < 2:
            parser.error(f"--compare-recipes needs two or more of {', '.join(sorted(PRESETS))}; got {args.compare_recipes!r}")
        if args.run_dir:
            parser.error("--run-dir names one run; with --compare-recipes use --runs (a folder for all of them)")
    root = require_data_dir(args.data_dir)
    if args.threads:
        torch.set_num_threads(args.threads)
    heap.keep_freed_memory()   # as `pyrovae evaluate` does: the evaluator then trims the heap as it goes
    runs_root = Path(args.runs) if args.runs else Path(__file__).resolve().parent / "runs"
    dataset = mnist(root, args.train_limit)
    rows, curves = [], {}
    for recipe in recipes:
        run_dir = Path(args.run_dir) if args.run_dir else runs_root / recipe
        row, metrics = train_and_evaluate(recipe, args, root, run_dir, dataset)
        log(f"{recipe}: test log p(x) {row['test_log_likelihood']:.2f} after {row['epochs']} epochs "
            f"({row['train_minutes']:.1f} min)")
        rows.append(row)
        curves[recipe] = metrics
    name = f"loglik_{recipes[0]}" if len(recipes) == 1 else "loglik_" + "_vs_".join(recipes)
    folder = results_dir(args.results)
    plot = folder / f"{name}.png"
    plot_elbo_against_minutes(curves, plot, f"{' vs '.join(recipes)}: ELBO against minutes")
    results = {"machine": machine(), "command": " ".join(["python", *sys.argv]), "recipes": recipes,
               "minutes": args.minutes, "train_limit": args.train_limit, "plot": str(plot), "models": rows}
    if len(rows) == 1:   # the one-recipe file keeps its old top-level keys
        results.update({key: value for key, value in rows[0].items() if key not in results})
        results["anchor"] = rows[0]["anchor"]["value"] if rows[0]["anchor"] else None
    write_results(name, results, markdown(rows, args.minutes), folder)


if __name__ == "__main__":
    main()

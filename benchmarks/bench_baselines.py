"""Amortized, mean-field and semi-amortized VAEs on MNIST: the same decoder, seed and data, at
equal epochs and at equal minutes (Krishnan, Liang & Hoffman 2018; Kim et al. 2018; Hoffman
et al. 2013 for the mean-field SVI recipe).

Each guide trains for ``--minutes`` of training time. After the epochs in ``--epoch-marks`` and
after the epochs where training time first passes each of ``--minute-marks``, the run is paused
and its test log p(x) is estimated on the first ``--n`` test points by importance sampling from a
per-point fit started at the guide's q (the encoder, or the prior for mean-field: K = ``--k``),
with the test ELBO of that fit. Evaluation time is not charged to training minutes. At the end,
``compare_inference`` gives each run's gap table on the same points.

Written: baselines.{json,md} and baselines.png (test log p(x) against training minutes, one line
per guide) in --results (default benchmarks/results).

    python benchmarks/bench_baselines.py --data-dir ../shared/data --minutes 15
        [--guides amortized,meanfield,semi-amortized] [--n 300] [--k 1000] [--epoch-marks 1,3,10,30]
        [--minute-marks 2,5,10,15] [--local-steps 4] [--out benchmarks/runs] [--results DIR]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import data_dir as find_data_dir  # noqa: E402
from common import log, machine, mnist, results_dir, write_results

from pyrovae.config import FitConfig  # noqa: E402
from pyrovae.evaluation.importance import estimate_log_likelihood  # noqa: E402
from pyrovae.inference.compare import compare_inference  # noqa: E402
from pyrovae.inference.local_fit import fit_local  # noqa: E402
from pyrovae.training import Callback  # noqa: E402
from pyrovae.workflows import fit  # noqa: E402


class Marks(Callback):
    """Evaluates test log p(x) at the marks and stops after ``seconds`` of training."""

    def __init__(self, args, test_points, guide: str):
        self.args, self.test, self.guide = args, test_points, guide
        self.train_seconds, self.points = 0.0, []
        self.minute_marks = sorted(args.minute_marks)

    def on_epoch_end(self, trainer, record: dict) -> None:
        self.train_seconds += record["train_seconds"]
        minutes = self.train_seconds / 60
        due = record["epoch"] in self.args.epoch_marks
        while self.minute_marks and minutes >= self.minute_marks[0]:
            self.minute_marks.pop(0)
            due = True
        if due:
            started = time.perf_counter()
            vae = trainer.vae
            vae.eval()
            fitted = fit_local(vae, self.test, "q" if vae.can("amortized") else "prior", max_steps=1000)
            estimate = estimate_log_likelihood(vae, self.test, k=self.args.k, proposal=fitted.guide).summary()
            vae.train()
            point = {"epoch": record["epoch"], "train_minutes": round(minutes, 3),
                     "log_likelihood": estimate["log_likelihood"], "log_likelihood_se": estimate["log_likelihood_se"],
                     "elbo_of_fit": float(fitted.elbo.mean()), "khat_frac_gt_0_7": estimate["khat_frac_gt_0_7"],
                     "eval_minutes": round((time.perf_counter() - started) / 60, 2)}
            self.points.append(point)
            log(f"  {self.guide}: {point}")
        if minutes >= self.args.minutes:
            trainer.stop(f"{self.args.minutes} minutes of training")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--minutes", type=float, default=15)
    parser.add_argument("--guides", default="amortized,meanfield,semi-amortized")
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--k", type=int, default=1000)
    parser.add_argument("--epoch-marks", default="1,3,10,30")
    parser.add_argument("--minute-marks", default="2,5,10,15")
    parser.add_argument("--local-steps", type=int, default=4)
    parser.add_argument("--compare-k", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "runs"))
    parser.add_argument("--results", default=None)
    args = parser.parse_args()
    root = find_data_dir(args.data_dir)
    if root is None:
        log("bench_baselines: no MNIST (pass --data-dir or set PYROVAE_DATA_DIR); skipped")
        return
    args.epoch_marks = [int(v) for v in args.epoch_marks.split(",")]
    args.minute_marks = [float(v) for v in args.minute_marks.split(",")]
    data = mnist(root)
    rows = []
    for guide in args.guides.split(","):
        log(f"bench_baselines: {guide}, {args.minutes} minutes")
        config = FitConfig(dataset="mnist", data_dir=root, guide=guide, epochs=100_000, seed=args.seed,
                           local_steps=args.local_steps, curves_every=1e9)
        run_dir = Path(args.out) / f"baseline-{guide}"
        import torch

        from pyrovae.workflows import prepare_data
        test = prepare_data(config, torch.device("cpu")).test[0][:args.n]
        marks = Marks(args, test, guide)
        started = time.perf_counter()
        result = fit(config, run_dir, overwrite=True, progress=False, callbacks=[marks], data=data)
        wall = time.perf_counter() - started
        from pyrovae.workflows import load_run
        run = load_run(run_dir, device="cpu", data_dir=root)
        x, _ = run.points("test", args.n)
        table = compare_inference(run, x, k=args.compare_k)
        rows.append({"guide": guide, "epochs": result["epochs"], "train_minutes": round(marks.train_seconds / 60, 2),
                     "wall_minutes": round(wall / 60, 2),
                     "epochs_per_minute": round(result["epochs"] / max(marks.train_seconds / 60, 1e-9), 2),
                     "seconds_per_epoch": result["seconds_per_epoch"], "points": marks.points, "compare": table})
    results = {"machine": machine(), "command": " ".join(sys.argv), "n": args.n, "k": args.k, "guides": rows}
    _plot(rows, results_dir(args.results) / "baselines.png")
    write_results("baselines", results, _markdown(rows, args), args.results)


def _markdown(rows: list[dict], args) -> str:
    lines = ["| guide | epochs | training minutes | epochs / minute | s / epoch |", "|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['guide']} | {row['epochs']} | {row['train_minutes']} | {row['epochs_per_minute']} | "
                     f"{row['seconds_per_epoch']} |")
    lines += ["", f"Test log p(x) (IS from a per-point fit, K={args.k}, first {args.n} test points) at the marks:", "",
              "| guide | epoch | training minutes | log p(x) ± SE | ELBO of the fit |", "|---|---|---|---|---|"]
    for row in rows:
        for point in row["points"]:
            lines.append(f"| {row['guide']} | {point['epoch']} | {point['train_minutes']} | "
                         f"{point['log_likelihood']:.2f} ± {point['log_likelihood_se']:.2f} | {point['elbo_of_fit']:.2f} |")
    lines += ["", "Gap table at the end (compare, IS from q*):", "",
              "| guide | log p̂(x) | L[q*] | L[q] | amortization (optimization) gap | approximation gap |", "|---|---|---|---|---|---|"]
    for row in rows:
        t = row["compare"]
        gap = "amortization_gap" if "amortization_gap" in t else "optimization_gap"   # a mean-field run's rows
        lines.append(f"| {row['guide']} | {t['log_likelihood']:.2f} ± {t['log_likelihood_se']:.2f} | "
                     f"{t['elbo_optimized']:.2f} | {t['elbo_q']:.2f} | {t[gap]:.2f} ± "
                     f"{t[gap + '_se']:.2f} | {t['approximation_gap']:.2f} ± {t['approximation_gap_se']:.2f} |")
    return "\n".join(lines)


def _plot(rows: list[dict], path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    figure = Figure(figsize=(7, 4.5), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for row in rows:
        points = row["points"]
        axes.errorbar([p["train_minutes"] for p in points], [p["log_likelihood"] for p in points],
                      yerr=[p["log_likelihood_se"] for p in points], marker="o", capsize=3, label=row["guide"])
    axes.set_xlabel("training minutes")
    axes.set_ylabel("test log p(x) (nats per image)")
    axes.set_title("MNIST test log p(x) against training time")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, format="png")


if __name__ == "__main__":
    main()

"""Inference gaps of amortized, flow and mean-field VI on MNIST at equal training time
(Cremer, Li & Duvenaud 2018, "Inference Suboptimality in Variational Autoencoders").

Trains one VAE per guide in ``--guides`` (default amortized,flow,meanfield), each for ``--minutes``
of training (whole epochs: an epoch is not started if the mean epoch time says it would overrun
the budget; at least one), all with the same model (784-400-50 by default, Bernoulli, Trace_ELBO):

- ``amortized``: the encoder's factorized Gaussian q(z | x) (FFG);
- ``flow``: the encoder's Gaussian pushed through ``--flows`` conditional IAF steps;
- ``meanfield``: a free Gaussian per training point (row-sparse Adam), no encoder.

Then :func:`pyrovae.inference.compare.compare_inference` on the first ``--limit`` test points
(and, for the mean-field run, training points), with the model frozen: log p̂(x) (importance
sampling from q*, K = ``--k``), L[q*] (the best member of the guide's family per point:
Gaussians, or per-point flows for the flow guide), L[q], the amortization gap L[q*] - L[q] and
the approximation gap log p̂ - L[q*], each ± its SE over points. Cremer et al.'s point: a
flow's approximation gap is smaller than the FFG's, and with it the amortization gap can grow.
The test-time fit runs Adam at ``--fit-lr`` (0.05, compare_inference's default) for Gaussian
families and ``--flow-fit-lr`` (also 0.05) for per-point flows: their MADE weights step 10x more
gently with a 50-step warm-up (guides/flow.py), without which 0.05 diverged (L[q*] hundreds of
nats below the encoder's L[q]); a row whose L[q*] falls below L[q] is still flagged.

One table row per guide (and split), with the epochs and minutes trained; one JSON object on
stdout; compare.{json,md} with the command and the machine in --results (default
benchmarks/results).

    python benchmarks/bench_compare.py --data-dir ../shared/data --minutes 10 [--guides amortized,flow,meanfield]
        [--flows 2] [--flow-hidden 0] [--fit-lr 0.05] [--flow-fit-lr 0.05] [--limit 1000] [--k 5000] [--steps 3000] [--latent-dim 50]
        [--hidden 400] [--seed 0] [--train-limit N] [--out benchmarks/runs] [--results DIR]

Smoke run: ``--minutes 0.05 --train-limit 1000 --limit 5 --k 50 --steps 20 --out /tmp/runs
--results /tmp/bench``. MNIST is read only from --data-dir or $PYROVAE_DATA_DIR; without it the
benchmark skips.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import data_dir as find_data_dir  # noqa: E402
from common import log, machine, mnist, write_results

from pyrovae.config import FitConfig  # noqa: E402
from pyrovae.core.options import parse_widths  # noqa: E402
from pyrovae.guides import GUIDES  # noqa: E402
from pyrovae.inference.compare import compare_inference, format_table  # noqa: E402
from pyrovae.training import Callback  # noqa: E402
from pyrovae.workflows import fit, load_run  # noqa: E402


class Budget(Callback):
    """Stops training after the epoch past which another one would overrun ``seconds`` of
    training (training and per-epoch evaluation time, as the metrics record them)."""

    def __init__(self, seconds: float):
        self.seconds, self.epoch_seconds = seconds, []

    def on_epoch_end(self, trainer, record: dict) -> None:
        self.epoch_seconds.append(record["train_seconds"] + record.get("eval_seconds", 0.0))
        mean = sum(self.epoch_seconds) / len(self.epoch_seconds)
        if sum(self.epoch_seconds) + mean > self.seconds:
            trainer.stop(f"the budget of {self.seconds / 60:g} minutes would be overrun by another epoch")


def train_for(config: FitConfig, run_dir: Path, seconds: float, data=None) -> dict:
    """Whole epochs until the next one would exceed ``seconds`` of training time (at least one)."""
    budget = Budget(seconds)
    fit(config, run_dir, overwrite=True, progress=False, data=data, callbacks=[budget])
    spent = sum(budget.epoch_seconds)
    return {"epochs": len(budget.epoch_seconds), "seconds": round(spent, 2), "minutes": round(spent / 60, 3),
            "seconds_per_epoch": round(spent / len(budget.epoch_seconds), 2)}


@click.command()
@click.option("--data-dir", default=None, help="Folder holding MNIST/raw (else $PYROVAE_DATA_DIR).")
@click.option("--guides", default="amortized,flow,meanfield", show_default=True,
              help="Comma list of guides, one run each.")
@click.option("--minutes", default=10.0, show_default=True, help="Training budget per guide.")
@click.option("--limit", default=1000, show_default=True, help="Points evaluated per split.")
@click.option("--k", default=5000, show_default=True, help="Importance samples for log p(x).")
@click.option("--steps", default=3000, show_default=True, help="Most steps of the test-time fit.")
@click.option("--latent-dim", default=50, show_default=True)
@click.option("--hidden", default="400", show_default=True)
@click.option("--flows", default=2, show_default=True, help="--guide flow: IAF steps.")
@click.option("--flow-hidden", default=0, show_default=True, help="--guide flow: MADE width (0: twice the latent size).")
@click.option("--fit-lr", default=0.05, show_default=True, help="Adam lr of the test-time fit (Gaussian families).")
@click.option("--flow-fit-lr", default=0.05, show_default=True,
              help="Adam lr of the test-time fit of per-point flows (their MADE weights step 10x more gently).")
@click.option("--seed", default=0, show_default=True)
@click.option("--train-limit", default=None, type=int, help="Train on the first N training points (smoke runs).")
@click.option("--out", "out_dir", default="benchmarks/runs", show_default=True, help="Where the runs go (one per guide).")
@click.option("--results", default=None, help="Folder for compare.{json,md} (default benchmarks/results).")
def main(data_dir, guides, minutes, limit, k, steps, latent_dim, hidden, flows, flow_hidden, fit_lr, flow_fit_lr,
         seed, train_limit, out_dir, results) -> None:
    data_dir = find_data_dir(data_dir)
    if data_dir is None:
        click.echo(json.dumps({"skipped": "MNIST not found; pass --data-dir or set PYROVAE_DATA_DIR"}))
        return
    names = [name.strip() for name in guides.split(",") if name.strip()]
    unknown = [name for name in names if name not in GUIDES]
    if unknown or not names:
        raise click.BadParameter(f"unknown guide(s) {unknown}; use a comma list of {', '.join(GUIDES)}",
                                 param_hint="--guides")
    hidden_widths = parse_widths(hidden)
    dataset = mnist(data_dir, train_limit)
    rows = {}
    for guide in names:
        config = FitConfig(dataset="mnist", data_dir=data_dir, guide=guide, latent_dim=latent_dim,
                           hidden=hidden_widths, flows=flows, flow_hidden=flow_hidden, epochs=10_000, seed=seed,
                           eval_train_points=1000)
        run_dir = Path(out_dir) / guide
        log(f"{guide}: training for {minutes:g} minutes ...")
        training = train_for(config, run_dir, minutes * 60, dataset)
        run = load_run(run_dir, "cpu", data_dir, data=dataset)
        row = {**training, "decoder_params": sum(p.numel() for p in run.vae.model.parameters()),
               "guide_params": sum(p.numel() for p in run.vae.guide.parameters())}
        if guide == "flow":
            row.update(flows=flows, flow_hidden=flow_hidden or 2 * latent_dim)
        row["fit_lr"] = flow_fit_lr if guide == "flow" else fit_lr
        for split in ("test", "train") if run.vae.can("per_datapoint") else ("test",):
            x, index = run.points(split, limit, seed)
            table = compare_inference(run, x, index=index, k=k, steps=steps, lr=row["fit_lr"], seed=seed,
                                      progress=True)
            print(format_table(table, f"{guide}, {split} points"), file=sys.stderr)
            row[split] = table
        rows[guide] = row
    result = {"command": "python benchmarks/bench_compare.py " + " ".join(sys.argv[1:]), "machine": machine(),
              "guides": names, "minutes": minutes, "limit": limit, "k": k, "steps": steps, "latent_dim": latent_dim,
              "hidden": hidden, "flows": flows, "flow_hidden": flow_hidden, "fit_lr": fit_lr, "flow_fit_lr": flow_fit_lr,
              "seed": seed, "train_limit": train_limit,
              "models": rows}
    write_results("compare", json.loads(json.dumps(result, default=str)), markdown(result), results)


def markdown(result: dict) -> str:
    def cell(table: dict, key: str) -> str:
        return f"{table[key]:.2f} ± {table[key + '_se']:.2f}" if table.get(key) is not None else "–"

    points = f", trained on the first {result['train_limit']:,} training points" if result["train_limit"] else ""
    lines = [f"# Inference gaps of {', '.join(result['guides'])} on MNIST at equal training time "
             f"({result['minutes']:g} min each; `{result['command']}`)", "",
             f"latent {result['latent_dim']}, hidden {result['hidden']}, flow guide: {result['flows']} IAF steps; "
             f"{result['limit']} points per split, K = {result['k']}, seed {result['seed']}{points}. "
             "Nats per point; ± is the SE over points.", "",
             "| guide | points | q | log p̂(x) | L[q*] | L[q] | amortization (optimization) gap | approximation gap | q* family "
             "| epochs | minutes | params (model + guide) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    failed = []
    for guide, row in result["models"].items():
        for split in ("test", "train"):
            if split in row:
                t = row[split]
                gap = "amortization_gap" if "amortization_gap" in t else "optimization_gap"   # trained rows'
                lines.append(f"| {guide} | {split} | {t['q']} | {cell(t, 'log_likelihood')} "
                             f"| {cell(t, 'elbo_optimized')} | {cell(t, 'elbo_q')} | {cell(t, gap)} "
                             f"| {cell(t, 'approximation_gap')} | {t['q_star_family']} | {row['epochs']} | {row['minutes']:.2f} "
                             f"| {row['decoder_params']:,} + {row['guide_params']:,} |")
                if t[gap] < -2 * t[f"{gap}_se"]:
                    failed.append(f"{guide} ({split} points, test-time fit lr {row['fit_lr']})")
    lines += ["", "amortization gap = L[q*] - L[q]; approximation gap = log p̂ - L[q*] (Cremer et al. 2018). q* is the "
              "best per-point member of the guide's family (the q* family column: diagonal Gaussians, per-point "
              "IAFs for the flow guide, per-point Cholesky factors for the full-covariance guide), "
              "fitted with the model frozen. For a mean-field run, the test points' q is their test-time fit (no "
              "gap); on training points, L[q*] - L[q] is the optimization gap: how far per-row SVI left the trained "
              "rows from q*. Minutes: training and per-epoch evaluation, whole epochs within the budget."]
    if failed:
        lines += ["", f"**Warning**: L[q*] < L[q] for {', '.join(failed)}: the test-time fit did worse than its own "
                  "starting point, so q* is not the family's best and both gaps are wrong. Lower its learning rate "
                  "(--fit-lr, --flow-fit-lr) or raise --steps."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()

"""Amortized vs mean-field VI on MNIST at the same wall-clock budget (Cremer, Li & Duvenaud 2018).

Trains an amortized VAE and a mean-field VAE (free (loc_i, log_scale_i) per training point,
row-sparse Adam) with the same decoder for ``--minutes`` of training each (whole epochs: an
epoch is not started if the mean epoch time says it would overrun the budget), then runs
:func:`pyrovae.compare.compare_inference` on the first ``--limit`` test points (and, for the
mean-field run, training points). Prints one JSON object on stdout; writes it and a markdown
table, with the command and the machine, to benchmarks/results/compare.{json,md}.

    python benchmarks/bench_compare.py --data-dir /work/shared/data --minutes 10

MNIST is read only from --data-dir or $PYROVAE_DATA_DIR; without it the benchmark skips.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import data_dir as find_data_dir, machine, write_results  # noqa: E402

from pyrovae.compare import compare_inference, format_table  # noqa: E402
from pyrovae.config import FitConfig, parse_hidden  # noqa: E402
from pyrovae.train import fit, load_run  # noqa: E402


class BudgetSpent(Exception):
    """Raised from the epoch callback once another epoch would overrun the budget."""


def train_for(config: FitConfig, run_dir: Path, seconds: float) -> dict:
    """Whole epochs until the next one would exceed ``seconds`` of training time (at least one)."""
    epoch_seconds: list[float] = []

    def on_epoch(record: dict) -> None:
        epoch_seconds.append(record["train_seconds"] + record["eval_seconds"])
        mean = sum(epoch_seconds) / len(epoch_seconds)
        if sum(epoch_seconds) + mean > seconds:
            raise BudgetSpent

    try:
        fit(config, run_dir, overwrite=True, progress=False, on_epoch=on_epoch)
    except BudgetSpent:
        pass
    return {"epochs": len(epoch_seconds), "seconds": round(sum(epoch_seconds), 2),
            "seconds_per_epoch": round(sum(epoch_seconds) / len(epoch_seconds), 2)}


@click.command()
@click.option("--data-dir", default=None, help="Folder holding MNIST/raw (else $PYROVAE_DATA_DIR).")
@click.option("--minutes", default=10.0, show_default=True, help="Training budget per model.")
@click.option("--limit", default=1000, show_default=True, help="Points evaluated per split.")
@click.option("--k", default=5000, show_default=True, help="Importance samples for log p(x).")
@click.option("--steps", default=3000, show_default=True, help="Most steps of the test-time fit.")
@click.option("--latent-dim", default=50, show_default=True)
@click.option("--hidden", default="400", show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--out", "out_dir", default="benchmarks/runs", show_default=True, help="Where the two runs go.")
def main(data_dir, minutes, limit, k, steps, latent_dim, hidden, seed, out_dir) -> None:
    data_dir = find_data_dir(data_dir)
    if data_dir is None:
        click.echo(json.dumps({"skipped": "MNIST not found; pass --data-dir or set PYROVAE_DATA_DIR"}))
        return
    hidden_widths = parse_hidden(hidden)
    rows = {}
    for guide in ("amortized", "meanfield"):
        config = FitConfig(dataset="mnist", data_dir=data_dir, guide=guide, latent_dim=latent_dim,
                           hidden=hidden_widths, epochs=10_000, seed=seed, eval_train_points=1000)
        run_dir = Path(out_dir) / guide
        training = train_for(config, run_dir, minutes * 60)
        run = load_run(run_dir, "cpu", data_dir)
        decoder_params = sum(p.numel() for p in run.vae.decoder.parameters())
        guide_params = sum(p.numel() for p in run.vae.guide_module.parameters())
        row = {**training, "decoder_params": decoder_params, "guide_params": guide_params}
        for split in ("test", "train") if guide == "meanfield" else ("test",):
            x, index = run.points(split, limit, seed)
            table = compare_inference(run, x, index=index, k=k, steps=steps, seed=seed, progress=True)
            print(format_table(table, f"{guide}, {split} points"), file=sys.stderr)
            row[split] = table
        rows[guide] = row
    result = {"command": "python benchmarks/bench_compare.py " + " ".join(sys.argv[1:]), "machine": machine(),
              "minutes": minutes, "limit": limit, "k": k, "latent_dim": latent_dim, "hidden": hidden,
              "seed": seed, "models": rows}
    write_results("compare", json.loads(json.dumps(result, default=str)), markdown(result))


def markdown(result: dict) -> str:
    def cell(table: dict, key: str) -> str:
        return f"{table[key]:.2f} ± {table[key + '_se']:.2f}" if key in table else "–"

    lines = [f"# Amortized vs mean-field VI on MNIST ({result['minutes']} min of training each; "
             f"`{result['command']}`)", "",
             f"latent {result['latent_dim']}, hidden {result['hidden']}, {result['limit']} points, "
             f"K = {result['k']}, seed {result['seed']}. Nats per point; ± is the SE over points.", "",
             "| model | points | q | log p̂(x) | L[q] | L[q*] | amortization gap | approximation gap "
             "| epochs | s/epoch | params (decoder + guide) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for guide, row in result["models"].items():
        for split in ("test", "train"):
            if split in row:
                t = row[split]
                lines.append(f"| {guide} | {split} | {t['q']} | {cell(t, 'log_likelihood')} | {cell(t, 'elbo_q')} "
                             f"| {cell(t, 'elbo_optimized')} | {cell(t, 'amortization_gap')} "
                             f"| {cell(t, 'approximation_gap')} | {row['epochs']} | {row['seconds_per_epoch']} "
                             f"| {row['decoder_params']:,} + {row['guide_params']:,} |")
    lines += ["", "For a mean-field run, the test points' q is their test-time fit (no amortization gap); on "
              "training points, L[q*] - L[q] measures how far per-row SVI left the trained rows from q*."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()

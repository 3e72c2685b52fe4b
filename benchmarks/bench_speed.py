"""Speed of pyrovae's training step against a hand-written PyTorch step of the same math.

For each guide (amortized, mean-field), objective (trace, meanfield, iwae with K=5 and 50)
and batch size, both steps run on the same networks, batch and optimizer, timed in turn in
one process (median of --repeats after --warmup). With --data-dir (or $PYROVAE_DATA_DIR)
holding MNIST, it also times whole epochs (data handling included).

    python benchmarks/bench_speed.py --data-dir ../shared/data
"""
from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import pyro
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import handwritten  # noqa: E402
from bench_fit_mnist import epoch_comparison, epoch_table  # noqa: E402
from common import data_dir, interleaved_medians, log, machine, write_results  # noqa: E402

from pyrovae.config import FitConfig, build_vae  # noqa: E402
from pyrovae.objectives import make_objective  # noqa: E402
from pyrovae.optim import make_optimizer  # noqa: E402
from pyrovae.train import training_step  # noqa: E402

CASES = [("amortized", "trace", 1), ("amortized", "meanfield", 1), ("amortized", "iwae", 5),
         ("amortized", "iwae", 50), ("meanfield", "trace", 1), ("meanfield", "meanfield", 1)]
NUM_DATA = 60_000


def step_ratio(guide: str, objective: str, particles: int, batch_size: int, repeats: int, warmup: int,
               jit: bool = False) -> dict:
    pyro.clear_param_store()
    torch.manual_seed(0)
    config = FitConfig(guide=guide, elbo=objective, particles=particles, jit=jit)
    vae_pyro = build_vae(config, 784, NUM_DATA)
    vae_hand = copy.deepcopy(vae_pyro)
    opt_pyro, opt_hand = make_optimizer(vae_pyro, 1e-3), make_optimizer(vae_hand, 1e-3)
    pyro_objective = make_objective(objective, particles, jit)
    x = torch.rand(batch_size, 784).bernoulli()
    index = torch.randperm(NUM_DATA)[:batch_size]
    beta = torch.tensor(1.0) if jit else 1.0

    vae_pyro.register_params = jit   # as the trainer does
    model_fn, guide_fn = vae_pyro.model, vae_pyro.guide

    def pyro_step():
        training_step(pyro_objective, opt_pyro, model_fn, guide_fn, x, index, beta, NUM_DATA)

    def hand_step():
        loss = handwritten.loss(vae_hand, x, index, NUM_DATA, objective, particles)
        opt_hand.zero_grad(set_to_none=True)
        loss.backward()
        opt_hand.step()

    medians = interleaved_medians({"pyrovae": pyro_step, "hand": hand_step}, repeats, warmup)
    return {"guide": guide, "objective": objective, "particles": particles, "batch_size": batch_size,
            "jit": jit, "pyrovae_ms": 1e3 * medians["pyrovae"], "hand_ms": 1e3 * medians["hand"],
            "ratio": medians["pyrovae"] / medians["hand"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-sizes", default="32,128,1024")
    parser.add_argument("--repeats", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--jit", action="store_true", help="Also time Pyro's JIT ELBOs (trace, meanfield).")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--epochs", type=int, default=3, help="Epochs per side for the epoch timing.")
    args = parser.parse_args()
    pyro.enable_validation(False)   # as in training after the first step
    steps = []
    for batch_size in (int(b) for b in args.batch_sizes.split(",")):
        for guide, objective, particles in CASES:
            # large K x large batch is slow to time; fewer repeats keep the run short
            repeats = max(10, args.repeats // (10 if particles * batch_size > 10_000 else 1))
            row = step_ratio(guide, objective, particles, batch_size, repeats, args.warmup)
            log(f"{guide:9s} {objective:9s} K={particles:<3d} B={batch_size:<5d} "
                f"pyrovae {row['pyrovae_ms']:8.3f} ms  hand {row['hand_ms']:8.3f} ms  ratio {row['ratio']:.2f}")
            steps.append(row)
            if args.jit and objective in ("trace", "meanfield"):
                row = step_ratio(guide, objective, particles, batch_size, repeats, args.warmup, jit=True)
                log(f"{guide:9s} {objective:9s} JIT   B={batch_size:<5d} "
                    f"pyrovae {row['pyrovae_ms']:8.3f} ms  hand {row['hand_ms']:8.3f} ms  ratio {row['ratio']:.2f}")
                steps.append(row)
    results = {"machine": machine(), "steps": steps, "command": " ".join(sys.argv)}
    lines = ["| guide | objective | K | jit | batch | pyrovae ms | hand ms | ratio |", "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['guide']} | {r['objective']} | {r['particles']} | {'yes' if r['jit'] else 'no'} | "
              f"{r['batch_size']} | {r['pyrovae_ms']:.3f} | {r['hand_ms']:.3f} | {r['ratio']:.2f} |" for r in steps]
    root = data_dir(args.data_dir)
    if root:
        log("timing whole MNIST epochs ...")
        results["epoch"] = epoch_comparison(root, args.epochs, 128)
        lines += ["", *epoch_table(results["epoch"])]
    else:
        log("no MNIST found (--data-dir or $PYROVAE_DATA_DIR): skipping the epoch timing")
    write_results("speed", results, "\n".join(lines))


if __name__ == "__main__":
    main()

"""Speed of one pyrovae SVI step against one step of the same math in plain PyTorch.

For each guide (amortized, mean-field), objective (trace, meanfield, iwae with K=5 and 50) and
batch size (default 32, 128, 1024), one process times, in turn (common.interleaved_medians:
median of --repeats after --warmup), one optimizer step of

- pyrovae, eager:    ``svi_step(LossModule(vae, make_objective(elbo, K), N), optimizer, index, β, x)``
                     on the modules of ``build_vae`` and ``make_optimizer`` (Adam; row-sparse
                     Adam for the mean-field guide's tables), as ``pyrovae fit --no-jit`` steps;
- pyrovae, JIT:      the same with Pyro's JIT objective (``register=True``, β a tensor), the
                     default of ``pyrovae fit`` for trace and meanfield (Pyro has no JIT IWAE);
- pyrovae, compiled: (trace and meanfield, amortized guide) the eager LossModule wrapped in
                     ``torch.compile``: does a compiled loss match the JIT path? Dynamo breaks
                     the graph at Pyro's handlers; a compile that fails is reported as null;
- plain:             benchmarks/plain_vae.py's modules (its VAE, or its MeanFieldVAE: per-row
                     loc/log_scale tables indexed by the batch, with the same decoder) and
                     ``plain_vae.batch_bound``, the loss -(N/B) Σ_i bound_i, then
                     ``torch.optim.Adam`` on every parameter (dense: it moves every table row).

All variants start from the same weights (pyrovae's initialization copied into the plain
modules) and take the same batch of N = 60,000-point MNIST-shaped data (random binary pixels).
The table has one row per pyrovae variant: its ms per step, the plain step's ms (timed in the
same interleaving) and the ratio pyrovae / plain. The first call of the JIT and compiled
variants (tracing, compiling) is timed apart.

With MNIST (--data-dir or $PYROVAE_DATA_DIR) and --epochs > 0 it also times whole epochs,
`pyrovae fit` against plain_vae.run (bench_fit_mnist.epoch_comparison).

    python benchmarks/bench_speed.py --data-dir ../shared/data [--batch-sizes 32,128,1024]
        [--repeats 100] [--warmup 20] [--guides amortized,meanfield] [--objectives trace,meanfield,iwae]
        [--no-jit] [--no-compile] [--epochs 3] [--limit N] [--threads N] [--results DIR]

Smoke run: ``--batch-sizes 32 --repeats 2 --warmup 1 --epochs 0 --results /tmp/bench``.

Timings need an otherwise idle machine: on the shared 2-core machine, while another process
runs, torch's OpenMP threads (which spin while they wait) made every step here, plain and
pyrovae alike, 10-15x slower at random moments (11 ms or 172 ms for the same plain IWAE K=5 step
at batch 32, seconds apart). The results record the 1-minute load average and OMP_* settings
(common.machine); under load OMP_WAIT_POLICY=PASSIVE kept the steps near their idle times (its
effect on an idle machine was not measured).
"""
from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path
from typing import Callable

import pyro
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import plain_vae  # noqa: E402
from common import data_dir, interleaved_medians, log, machine, write_results  # noqa: E402

from pyrovae.config import FitConfig, build_vae  # noqa: E402
from pyrovae.objectives import make_objective  # noqa: E402
from pyrovae.training.optim import make_optimizer  # noqa: E402
from pyrovae.training.step import LossModule, svi_step  # noqa: E402

CASES = [("amortized", "trace", 1), ("amortized", "meanfield", 1), ("amortized", "iwae", 5),
         ("amortized", "iwae", 50), ("meanfield", "trace", 1), ("meanfield", "meanfield", 1)]
NUM_DATA = 60_000
LR = 1e-3


def pyrovae_vae(guide: str, objective: str, particles: int):
    """build_vae's modules, from torch seed 0 (every variant starts from the same weights)."""
    torch.manual_seed(0)
    return build_vae(FitConfig(guide=guide, elbo=objective, particles=particles), 784, NUM_DATA)


def plain_copy(vae) -> torch.nn.Module:
    """plain_vae's modules holding ``vae``'s weights (the layers line up index for index)."""
    if vae.can("amortized"):
        plain = plain_vae.VAE()
        plain.encoder.load_state_dict(vae.guide.encoders["z"].state_dict())
    else:
        plain = plain_vae.MeanFieldVAE(NUM_DATA)
        with torch.no_grad():
            plain.loc.copy_(vae.guide.loc["z"])
            plain.log_scale.copy_(vae.guide.log_scale["z"])
    plain.decoder.load_state_dict(vae.model.decoder.state_dict())
    return plain


def pyrovae_step(guide: str, objective: str, particles: int, x: torch.Tensor, index: torch.Tensor,
                 variant: str) -> Callable[[], float]:
    vae = pyrovae_vae(guide, objective, particles)
    optimizer = make_optimizer(vae, LR)
    jit = variant == "jit"
    loss: torch.nn.Module = LossModule(vae, make_objective(objective, particles, jit), NUM_DATA, register=jit)
    if variant == "compiled":
        torch._dynamo.reset()   # a fresh cache: no recompile limit carried over from earlier cases
        loss = torch.compile(loss)
    beta = torch.tensor(1.0) if jit else 1.0
    return lambda: svi_step(loss, optimizer, index, beta, x)


def plain_step(guide: str, objective: str, particles: int, x: torch.Tensor, index: torch.Tensor) -> Callable[[], None]:
    plain = plain_copy(pyrovae_vae(guide, objective, particles))
    optimizer = torch.optim.Adam(plain.parameters(), lr=LR)

    def step() -> None:
        loss = -(NUM_DATA / len(x)) * plain_vae.batch_bound(plain, x, objective, particles, index)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return step


def graph_breaks() -> int:
    from torch._dynamo.utils import counters
    return sum(counters["graph_break"].values())


def time_case(guide: str, objective: str, particles: int, batch_size: int, repeats: int, warmup: int,
              jit: bool, compile: bool) -> list[dict]:
    """One row per pyrovae variant of the case, each with the plain step's median of the same run."""
    pyro.clear_param_store()
    generator = torch.Generator().manual_seed(batch_size)
    x = torch.rand(batch_size, 784, generator=generator).bernoulli(generator=generator)
    index = torch.randperm(NUM_DATA, generator=generator)[:batch_size]
    variants = ["eager"]
    if jit and objective in ("trace", "meanfield"):
        variants.append("jit")
    if compile and guide == "amortized" and objective in ("trace", "meanfield"):
        variants.append("compiled")
    steps: dict[str, Callable] = {}
    first_call: dict[str, float | None] = {}
    errors: dict[str, str] = {}
    for variant in variants:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")   # dynamo's graph-break and Pyro's JIT tracer warnings
                step = pyrovae_step(guide, objective, particles, x, index, variant)
                breaks, started = graph_breaks(), time.perf_counter()
                step()   # the JIT traces and torch.compile compiles here
                first_call[f"{variant}_first_call_s"] = round(time.perf_counter() - started, 3)
                step()   # and a compiled backward may recompile once more
            if variant == "compiled":
                first_call["compiled_graph_breaks"] = graph_breaks() - breaks
        except Exception as error:   # noqa: BLE001  (a compile failure is a result, not a crash)
            message = str(error).strip().splitlines()
            errors[variant] = f"{type(error).__name__}: {message[0][:300] if message else ''}"
            log(f"  {variant} failed: {errors[variant]}")
            continue
        steps[variant] = step
    steps["plain"] = plain_step(guide, objective, particles, x, index)
    medians = interleaved_medians(steps, repeats, warmup)
    rows = []
    for variant in variants:
        ms = 1e3 * medians[variant] if variant in medians else None
        rows.append({"guide": guide, "objective": objective, "particles": particles, "batch_size": batch_size,
                     "variant": variant, "jit": variant == "jit", "pyrovae_ms": ms, "plain_ms": 1e3 * medians["plain"],
                     "ratio": ms / (1e3 * medians["plain"]) if ms is not None else None,
                     "first_call_s": first_call.get(f"{variant}_first_call_s"),
                     "graph_breaks": first_call.get("compiled_graph_breaks") if variant == "compiled" else None,
                     "error": errors.get(variant), "repeats": repeats})
    return rows


def fmt(value: float | None, digits: int = 3) -> str:
    return "null" if value is None else f"{value:.{digits}f}"


def table(rows: list[dict]) -> list[str]:
    lines = ["| guide | objective | K | variant | batch | pyrovae ms | plain ms | ratio |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['guide']} | {r['objective']} | {r['particles']} | {r['variant']} | {r['batch_size']} "
              f"| {fmt(r['pyrovae_ms'])} | {r['plain_ms']:.3f} | {fmt(r['ratio'], 2)} |" for r in rows]
    lines += ["", "ms: median per step (forward, backward, optimizer). variant: eager = `pyrovae fit --no-jit`, "
              "jit = Pyro's JIT objective (fit's default for trace and meanfield), compiled = the eager loss "
              "module in `torch.compile` (null: it failed, see speed.json). plain = benchmarks/plain_vae.py's "
              "modules and loss with torch.optim.Adam on every parameter; for the mean-field guide that Adam is "
              "dense over the 60,000-row tables, while pyrovae's row-sparse Adam touches only the batch's rows. "
              "ratio = pyrovae / plain, both timed in the same interleaved run."]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-sizes", default="32,128,1024")
    parser.add_argument("--repeats", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--guides", default="amortized,meanfield", help="Comma list: the cases of these guides.")
    parser.add_argument("--objectives", default="trace,meanfield,iwae", help="Comma list: the cases of these.")
    parser.add_argument("--no-jit", dest="jit", action="store_false", help="Skip Pyro's JIT objectives.")
    parser.add_argument("--no-compile", dest="compile", action="store_false", help="Skip the torch.compile'd loss.")
    parser.add_argument("--jit", dest="old_jit_flag", action="store_true", help=argparse.SUPPRESS)   # now the default
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's).")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--epochs", type=int, default=3, help="Epochs per side for the epoch timing (0: skip it).")
    parser.add_argument("--limit", type=int, default=None, help="Epoch timing on the first N training points.")
    parser.add_argument("--results", default=None, help="Folder for speed.{json,md} (default benchmarks/results).")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    pyro.enable_validation(False)   # as in training after the first step
    guides, objectives = args.guides.split(","), args.objectives.split(",")
    cases = [case for case in CASES if case[0] in guides and case[1] in objectives]
    steps = []
    for batch_size in (int(b) for b in args.batch_sizes.split(",")):
        for guide, objective, particles in cases:
            # large K x large batch is slow to time; fewer repeats keep the run short
            repeats = max(min(10, args.repeats), args.repeats // (10 if particles * batch_size > 10_000 else 1))
            for row in time_case(guide, objective, particles, batch_size, repeats, args.warmup, args.jit, args.compile):
                log(f"{guide:9s} {objective:9s} K={particles:<3d} B={batch_size:<5d} {row['variant']:8s} "
                    f"pyrovae {fmt(row['pyrovae_ms']):>8s} ms  plain {row['plain_ms']:8.3f} ms  "
                    f"ratio {fmt(row['ratio'], 2)}")
                steps.append(row)
    results = {"machine": machine(), "steps": steps, "command": " ".join(["python", *sys.argv])}
    lines = table(steps)
    root = data_dir(args.data_dir)
    if root and args.epochs > 0:
        from bench_fit_mnist import epoch_comparison, epoch_table
        log("timing whole MNIST epochs ...")
        results["epoch"] = epoch_comparison(root, args.epochs, args.limit)
        lines += ["", *epoch_table(results["epoch"])]
    elif args.epochs > 0:
        log("no MNIST found (--data-dir or $PYROVAE_DATA_DIR): skipping the epoch timing")
    write_results("speed", results, "\n".join(lines), args.results)


if __name__ == "__main__":
    main()

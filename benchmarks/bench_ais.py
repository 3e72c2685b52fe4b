"""Annealed importance sampling on MNIST: throughput, memory, and how it compares with IS.

Two parts, each in a fresh subprocess per setting so peak memory is measured per setting:

``--part throughput``: AIS with T steps, C chains, L leapfrog steps on N test points of a model
of the default architecture (random weights unless ``--run-dir``; throughput does not depend on
training). Reported: GFLOP/s of the decoder's matmuls, forward and backward (the gradient in z:
2 x fan_in x fan_out per layer and (point, chain) pair, twice per log-density evaluation), against
a plain torch matmul of the decoder's shapes into preallocated outputs, timed after every batch
of points in the same process (the machine's rate drifts); the ratio (goal: 0.6); seconds; and
the peak RSS for T = 100 and T = 1000 (flat in T when the chunking works).

``--part study`` on a trained run (``--run-dir``, e.g. 10 epochs of ``pyrovae fit --dataset mnist``):
on the first N test points, IS from the encoder and from a per-point fit (K=5000) and AIS at each
T of ``--steps-list`` (C=16, L=5), with minutes for each; and BDMC on ``--bdmc-n`` points simulated
from the model at the same T: the gap between the forward and reverse chains.

    python benchmarks/bench_ais.py --part throughput --data-dir ../shared/data --n 250 --steps-list 100,1000
    python benchmarks/bench_ais.py --part study --data-dir ../shared/data --run-dir RUN --n 1000 \
        --steps-list 100,1000 --bdmc-n 100

One JSON object goes to stdout, progress to stderr; results go to ais_throughput.{json,md} or
ais_study.{json,md} in --results (default benchmarks/results).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import data_dir, log, machine, write_results  # noqa: E402


def _images(root: str, n: int) -> torch.Tensor:
    import torchvision
    test = torchvision.datasets.MNIST(root, train=False, download=False)
    return torch.bernoulli(test.data[:n].reshape(-1, 784).float() / 255.0, generator=torch.Generator().manual_seed(0))


def _decoder_shapes(vae) -> list[tuple[int, int]]:
    return [(m.in_features, m.out_features) for m in vae.model.decoder if isinstance(m, torch.nn.Linear)]


def throughput_worker(args) -> dict:
    """One setting: AIS over N points, a reference matmul after every batch."""
    from pyrovae.config import FitConfig, build_vae
    from pyrovae.core import heap
    from pyrovae.evaluation import ais
    from pyrovae.workflows import load_run

    heap.keep_freed_memory()
    torch.manual_seed(0)
    vae = (load_run(args.run_dir, device="cpu").vae if args.run_dir else build_vae(FitConfig(), 784, 1).eval())
    x = _images(args.data_dir, args.n)
    chains, leapfrog, steps = args.chains, args.leapfrog, args.steps
    batch = max(1, ais.PAIRS // chains)
    shapes = _decoder_shapes(vae)
    pairs = batch * chains
    inputs = [torch.randn(pairs, fan_in) for fan_in, _ in shapes]
    weights = [torch.randn(fan_in, fan_out) for fan_in, fan_out in shapes]
    outputs = [torch.empty(pairs, fan_out) for _, fan_out in shapes]
    grads_in = [torch.randn(pairs, fan_out) for _, fan_out in shapes]
    grads_out = [torch.empty(pairs, fan_in) for fan_in, _ in shapes]
    flops_per_pair = sum(2 * 2 * fan_in * fan_out for fan_in, fan_out in shapes)   # forward + input gradient
    matmul_rates = []

    def reference() -> None:
        started = time.perf_counter()
        for a, w, out, g, gout in zip(inputs, weights, outputs, grads_in, grads_out):
            torch.mm(a, w, out=out)
            torch.mm(g, w.T, out=gout)
        matmul_rates.append(pairs * flops_per_pair / (time.perf_counter() - started))

    warm_started = time.perf_counter()
    ais.estimate_log_likelihood_ais(vae, x[:batch], steps=2, chains=chains, leapfrog=leapfrog, is_k=0,
                                    compile=args.compile)   # compiles the kernels before the clock
    warmup = time.perf_counter() - warm_started
    reference()
    seconds, done = 0.0, 0
    for start in range(0, args.n, batch):
        chunk = x[start:start + batch]
        began = time.perf_counter()
        ais.estimate_log_likelihood_ais(vae, chunk, steps=steps, chains=chains, leapfrog=leapfrog, is_k=0,
                                        compile=args.compile)
        seconds += time.perf_counter() - began
        done += len(chunk)
        reference()
        log(f"  T={steps}: {done}/{args.n} points, {seconds:.1f} s")
    evaluations = done * chains * steps * leapfrog
    rate = evaluations * flops_per_pair / seconds
    matmul = statistics.median(matmul_rates)
    return {"steps": steps, "chains": chains, "leapfrog": leapfrog, "n": done, "batch": batch,
            "seconds": round(seconds, 2), "warmup_seconds": round(warmup, 2),
            "gflops": round(rate / 1e9, 1), "matmul_gflops": round(matmul / 1e9, 1), "ratio": round(rate / matmul, 3),
            "matmul_gflops_range": [round(min(matmul_rates) / 1e9, 1), round(max(matmul_rates) / 1e9, 1)],
            "minutes_per_1000_points": round(seconds / done * 1000 / 60, 2),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def study(args) -> dict:
    from pyrovae.core import heap
    from pyrovae.core.programs import rows_of
    from pyrovae.evaluation.ais import bdmc, estimate_log_likelihood_ais
    from pyrovae.evaluation.importance import estimate_log_likelihood
    from pyrovae.inference.local_fit import fit_local
    from pyrovae.workflows import load_run

    heap.keep_freed_memory()
    run = load_run(args.run_dir, device="cpu", data_dir=args.data_dir)
    x, _ = run.points("test", args.n)
    rows: list[dict] = []

    def timed(name: str, work) -> dict:
        log(f"study: {name}")
        started = time.perf_counter()
        summary = work()
        row = {"estimator": name, "minutes": round((time.perf_counter() - started) / 60, 2), **summary}
        rows.append(row)
        log(f"  {json.dumps({k: v for k, v in row.items() if not isinstance(v, dict)})}")
        return row

    timed("IS, encoder, K=5000", lambda: estimate_log_likelihood(run.vae, x, k=5000, progress=True).summary())

    def is_fit() -> dict:
        fitted = fit_local(run.vae, x, "q")
        return {**estimate_log_likelihood(run.vae, x, k=5000, proposal=fitted.guide, progress=True).summary(),
                "fit_minutes": round(fitted.seconds / 60, 2)}

    timed("IS, per-point fit, K=5000", is_fit)
    for steps in args.steps_list:
        timed(f"AIS, encoder, T={steps}", lambda steps=steps: estimate_log_likelihood_ais(
            run.vae, x, steps=steps, chains=args.chains, leapfrog=args.leapfrog, is_k=0, progress=True).summary())
    sandwiches = []
    template = rows_of(run.data.test, slice(0, args.bdmc_n))
    for steps in args.steps_list:
        log(f"study: BDMC T={steps}")
        started = time.perf_counter()
        summary = bdmc(run.vae, template, steps=steps, chains=args.chains, leapfrog=args.leapfrog, is_k=5000,
                       progress=True).summary()
        sandwiches.append({**summary, "minutes": round((time.perf_counter() - started) / 60, 2)})
        log(f"  {json.dumps(sandwiches[-1])}")
    return {"run_dir": str(args.run_dir), "epoch": run.epoch, "n": len(x[0]), "estimates": rows, "bdmc": sandwiches}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=["throughput", "study"], default="throughput")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--run-dir", default=None)
    parser.add_argument("--n", type=int, default=250)
    parser.add_argument("--steps-list", default="100,1000")
    parser.add_argument("--chains", type=int, default=16)
    parser.add_argument("--leapfrog", type=int, default=5)
    parser.add_argument("--bdmc-n", type=int, default=100)
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--results", default=None)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=100, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.data_dir = data_dir(args.data_dir)
    if args.data_dir is None:
        parser.error("pass --data-dir (or set PYROVAE_DATA_DIR) to a folder holding MNIST/raw")
    args.steps_list = [int(s) for s in args.steps_list.split(",")]
    if args.worker:
        print(json.dumps(throughput_worker(args)), flush=True)
        return
    info = machine()
    if args.part == "study":
        if not args.run_dir:
            parser.error("--part study needs --run-dir (a trained run)")
        results = {"machine": info, "command": " ".join(sys.argv), **study(args)}
        lines = ["| estimator | log p(x) | SE | minutes | notes |", "|---|---|---|---|---|"]
        for row in results["estimates"]:
            notes = (f"k-hat > 0.7: {row['khat_frac_gt_0_7']:.1%}" if row.get("khat_frac_gt_0_7") is not None
                     else f"acceptance {row['accept_rate_mean']:.2f}" if "accept_rate_mean" in row else "")
            lines.append(f"| {row['estimator']} | {row['log_likelihood']:.3f} | {row['log_likelihood_se']:.3f} | "
                         f"{row['minutes']} | {notes} |")
        lines += ["", f"BDMC on {args.bdmc_n} points simulated from the model:", "",
                  "| T | forward (lower) | reverse (upper) | gap ± SE | IS K=5000 | minutes |", "|---|---|---|---|---|---|"]
        for row in results["bdmc"]:
            lines.append(f"| {row['steps']} | {row['forward_lower_bound']:.3f} | {row['reverse_upper_bound']:.3f} | "
                         f"{row['gap']:.3f} ± {row['gap_se']:.3f} | {row['is_log_likelihood']:.3f} | {row['minutes']} |")
        write_results("ais_study", results, "\n".join(lines), args.results)
        return
    settings = []
    for steps in args.steps_list:
        command = [sys.executable, __file__, "--worker", "--steps", str(steps), "--n", str(args.n), "--data-dir",
                   args.data_dir, "--chains", str(args.chains), "--leapfrog", str(args.leapfrog),
                   "--compile" if args.compile else "--no-compile"] + (["--run-dir", args.run_dir] if args.run_dir else [])
        log(f"AIS throughput: T={steps}, N={args.n}")
        out = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True, env=os.environ).stdout
        settings.append(json.loads(out.strip().splitlines()[-1]))
    results = {"machine": info, "command": " ".join(sys.argv), "settings": settings}
    lines = ["| T | C | L | points | seconds | GFLOP/s | matmul GFLOP/s | ratio | min / 1000 points | peak RSS MB |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for s in settings:
        lines.append(f"| {s['steps']} | {s['chains']} | {s['leapfrog']} | {s['n']} | {s['seconds']} | {s['gflops']} | "
                     f"{s['matmul_gflops']} | {s['ratio']} | {s['minutes_per_1000_points']} | {s['peak_rss_mb']} |")
    write_results("ais_throughput", results, "\n".join(lines), args.results)


if __name__ == "__main__":
    main()

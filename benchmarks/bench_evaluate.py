"""Throughput and memory of the log p(x) evaluator (pyrovae.evaluation.importance) on MNIST.

The model is the default architecture, encoder 784-400-(2x50) and decoder 50-400-784 with a
Bernoulli likelihood, with random weights (throughput does not depend on training); pass
``--run-dir`` to time a trained run instead. The test images are binarized once (seed 0).

For each K (default 50, 500, 5000) a fresh subprocess evaluates N test points and reports:

- GFLOP/s of the evaluator, from the matmul FLOPs it executes: 2 * fan_in * fan_out per
  layer, the decoder once per (datapoint, particle), the encoder once per (datapoint, chunk).
  The "nominal" count charges the encoder per particle too.
- GFLOP/s of a plain torch matmul of the decoder's shapes, [chunk*batch, 50] @ [50, 400] and
  [chunk*batch, 400] @ [400, 784] into preallocated outputs, timed after every batch of points
  in the same process (the machine's rate drifts), and the ratio of the two.
- the seconds spent warming up (imports and, when compiled, torch.compile of the kernels),
  apart from the timed evaluation.
- the process's peak RSS (ru_maxrss): flat in K when the chunking works.

``--compile auto`` (default) compiles the log densities where ``estimate_log_likelihood``
would (N x K >= 1,000,000); ``on`` and ``off`` force it. Each worker first opts in to the heap
settings of ``pyrovae evaluate`` (``pyrovae.heap.keep_freed_memory``: the evaluator no longer
sets them itself); ``--no-heap-tuning`` measures the library called from Python without them.

Usage:
    python benchmarks/bench_evaluate.py --data-dir ../shared/data                  # N=500
    python benchmarks/bench_evaluate.py --data-dir ../shared/data --n 10000 --ks 5000  # full test set
    options: [--batch-size 200] [--chunk-size 50] [--compile auto|on|off] [--repeats 3] [--run-dir RUN]
             [--no-heap-tuning] [--no-save] [--results DIR]

One JSON object goes to stdout, progress to stderr; evaluate.json and .md (N=500, or
evaluate_n<N>.json and .md) are written to --results (default benchmarks/results).
Smoke run: ``--n 20 --ks 50 --results /tmp/bench``.
"""
from __future__ import annotations

import argparse
import json
import math
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

from pyrovae.evaluation.importance import BATCH_SIZE, CHUNK_SIZE  # noqa: E402


def load_test_images(data_dir: str, n: int) -> torch.Tensor:
    import torchvision

    test = torchvision.datasets.MNIST(data_dir, train=False, download=False)
    probs = test.data[:n].reshape(-1, 784).float() / 255.0
    return torch.bernoulli(probs, generator=torch.Generator().manual_seed(0))


def make_vae(run_dir: str | None):
    if run_dir:
        from pyrovae.workflows import load_run  # only needed for a trained run

        return load_run(run_dir, device="cpu").vae
    from pyrovae.config import FitConfig, build_vae

    torch.manual_seed(0)
    return build_vae(FitConfig(), 784, 1)   # the default VAE: 784-400-50, Bernoulli, amortized guide


def layer_flops(module: torch.nn.Module) -> int:
    """2 * Σ fan_in * fan_out over the Linear layers: matmul FLOPs per input row."""
    return sum(2 * m.in_features * m.out_features for m in module.modules() if isinstance(m, torch.nn.Linear))


def matmul_seconds(rows: int, latent: int, hidden: int, pixels: int, repeats: int) -> list[float]:
    """Times of [rows, latent] @ [latent, hidden] plus [rows, hidden] @ [hidden, pixels], into
    preallocated outputs: the rate of the arithmetic alone, with no allocation or page faults."""
    z, w1, h_out = torch.randn(rows, latent), torch.randn(latent, hidden), torch.empty(rows, hidden)
    h, w2, x_out = torch.randn(rows, hidden), torch.randn(hidden, pixels), torch.empty(rows, pixels)
    times = []
    for _ in range(repeats + 1):  # the first is a warm-up
        start = time.perf_counter()
        torch.mm(z, w1, out=h_out)
        torch.mm(h, w2, out=x_out)
        times.append(time.perf_counter() - start)
    return times[1:]


def full_and_tail(total: int, step: int) -> int:
    """How many items cover one full step and the last, shorter one of range(0, total, step)."""
    return total if total <= step else step + total % step


def worker(args: argparse.Namespace) -> dict:
    """One K case, in its own process. After every batch of points the evaluator reports
    progress, and the matmul reference runs there (outside the evaluator's timed spans), so each
    batch is compared with the machine's matmul rate of the same moment: this 2-vCPU machine's
    rate drifts by a third from one second to the next."""
    from pyrovae.core import heap
    from pyrovae.evaluation.importance import COMPILE_PAIRS, estimate_log_likelihood

    heap_tuned = heap.keep_freed_memory() if args.heap_tuning else False   # as `pyrovae evaluate` does
    x = load_test_images(args.data_dir, args.n)
    vae = make_vae(args.run_dir)
    n, k, batch, chunk = len(x), args.k, args.batch_size, args.chunk_size
    compile = {"auto": n * k >= COMPILE_PAIRS, "on": True, "off": False}[args.compile]
    rows = min(k, chunk) * min(n, batch)
    first = next(m for m in vae.model.decoder if isinstance(m, torch.nn.Linear))
    shape = (rows, first.in_features, first.out_features, x.shape[1])
    # per particle: the whole model (decoder; a two-layer model's prior net too); per chunk: the guide
    decoder, encoder = layer_flops(vae.model), layer_flops(vae.guide)
    baseline_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # libraries and data
    # warm-up: lazy imports, and with compile=True the kernels for every shape of the run (a
    # full batch or chunk and the last, shorter one); its time is reported apart
    start = time.perf_counter()
    estimate_log_likelihood(vae, x[:full_and_tail(n, batch)], k=full_and_tail(k, chunk),
                            batch_size=batch, chunk_size=chunk, compile=compile)
    warmup_seconds = time.perf_counter() - start
    reference: list[float] = []
    batches: list[dict] = []
    span_start = [time.perf_counter()]

    def after_batch(done: int, total: int) -> None:
        seconds = time.perf_counter() - span_start[0]
        points = done - sum(b["points"] for b in batches)
        flops = points * k * decoder + points * math.ceil(k / chunk) * encoder
        times = matmul_seconds(*shape, args.repeats)
        reference.extend(times)
        batches.append({"points": points, "seconds": seconds, "gflops": flops / seconds / 1e9,
                        "matmul_gflops": matmul_flops / statistics.median(times) / 1e9})
        log(f"  {done}/{total} points, {batches[-1]['gflops']:.0f} GFLOP/s vs matmul "
            f"{batches[-1]['matmul_gflops']:.0f}")
        span_start[0] = time.perf_counter()

    matmul_flops = 2 * rows * (shape[1] * shape[2] + shape[2] * shape[3])
    load_before = os.getloadavg()[0]
    result = estimate_log_likelihood(vae, x, k=k, batch_size=batch, chunk_size=chunk, compile=compile,
                                     progress=after_batch)
    seconds = sum(b["seconds"] for b in batches)
    max_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    matmul_gflops = matmul_flops / statistics.median(reference) / 1e9
    executed = n * k * decoder + n * math.ceil(k / chunk) * encoder
    nominal = n * k * (decoder + encoder)
    summary = result.summary()
    return {
        "k": k, "n": n, "batch_size": batch, "chunk_size": chunk, "rows_per_chunk": rows,
        "compile": compile, "threads": torch.get_num_threads(), "heap_tuned": heap_tuned,
        "seconds": round(seconds, 3),
        "warmup_seconds": round(warmup_seconds, 3),
        "points_per_second": round(n / seconds, 2),
        "particles_per_second": round(n * k / seconds),
        "gflops_executed": round(executed / seconds / 1e9, 2),
        "gflops_nominal": round(nominal / seconds / 1e9, 2),
        "matmul_gflops": round(matmul_gflops, 2),
        "ratio_to_matmul": round(executed / seconds / 1e9 / matmul_gflops, 3),
        "ratio_median_of_batches": round(statistics.median(b["gflops"] / b["matmul_gflops"] for b in batches), 3),
        "max_rss_mb": round(max_rss_mb, 1),
        "baseline_rss_mb": round(baseline_rss_mb, 1),
        "load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "log_likelihood": round(summary["log_likelihood"], 3),
        "khat_frac_gt_0_7": summary["khat_frac_gt_0_7"],
    }


def heap_note(cases: list[dict]) -> str:
    tuned = {c.get("heap_tuned") for c in cases}
    return "on" if tuned == {True} else "off" if tuned == {False} else "mixed"


def markdown(report: dict) -> str:
    lines = [f"# Evaluator throughput (`{report['command']}`)", "",
             "| K | N | compiled | s (+ warm-up) | points/s | GFLOP/s executed | matmul GFLOP/s | ratio "
             "| ratio, median of batches | peak RSS MB (before evaluating) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for c in report["cases"]:
        lines.append(f"| {c['k']} | {c['n']} | {'yes' if c['compile'] else 'no'} | {c['seconds']} "
                     f"(+{c['warmup_seconds']}) | {c['points_per_second']} | {c['gflops_executed']} | "
                     f"{c['matmul_gflops']} | {c['ratio_to_matmul']} | {c['ratio_median_of_batches']} | "
                     f"{c['max_rss_mb']} ({c['baseline_rss_mb']}) |")
    lines += ["", "Executed FLOPs: decoder per (point, particle), encoder per (point, chunk); evaluate.json also has "
              "the nominal count, which charges the encoder per particle. Ratio = executed GFLOP/s over the "
              "median GFLOP/s of a matmul of the decoder's shapes into preallocated outputs, timed after every "
              "batch of points in the same process; the median of the per-batch ratios is less sensitive to the "
              "machine's drift. Warm-up: imports and, when compiled, torch.compile of the kernels. The FLOP count "
              "is exact for a one-layer model with the amortized Gaussian guide (a flow's MADEs and a two-layer "
              "guide's upper encoder run per particle, not per chunk). Heap settings of `pyrovae evaluate` "
              f"(pyrovae.heap.keep_freed_memory): {heap_note(report['cases'])}.", ""]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", help="folder holding MNIST/raw (torchvision layout); default $PYROVAE_DATA_DIR")
    parser.add_argument("--n", type=int, default=500, help="test points (10000 = the full test set)")
    parser.add_argument("--ks", default="50,500,5000", help="comma-separated numbers of importance samples")
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE)
    parser.add_argument("--chunk-size", type=int, default=CHUNK_SIZE)
    parser.add_argument("--compile", choices=["auto", "on", "off"], default="auto",
                        help="torch.compile of the log densities; auto: as estimate_log_likelihood decides")
    parser.add_argument("--repeats", type=int, default=3, help="repeats of the matmul reference after each batch")
    parser.add_argument("--run-dir", help="time a trained run (pyrovae fit --out) instead of random weights")
    parser.add_argument("--no-heap-tuning", dest="heap_tuning", action="store_false",
                        help="skip pyrovae.heap.keep_freed_memory() (the CLI calls it; a Python caller may not)")
    parser.add_argument("--no-save", action="store_true", help="do not write evaluate*.{json,md}")
    parser.add_argument("--results", default=None, help="folder for evaluate*.{json,md} (default benchmarks/results)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--k", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()

    args.data_dir = data_dir(args.data_dir)
    if args.worker:
        print(json.dumps(worker(args)))
        return 0
    if args.data_dir is None:
        log("skipped: MNIST not found; pass --data-dir (or set PYROVAE_DATA_DIR) to a folder holding MNIST/raw")
        print(json.dumps({"skipped": "MNIST not found"}))
        return 0
    command = "python benchmarks/bench_evaluate.py " + " ".join(sys.argv[1:])
    cases = []
    for k in (int(v) for v in args.ks.split(",")):
        log(f"K={k}, N={args.n}: running in a fresh process ...")
        argv = [sys.executable, __file__, "--worker", "--k", str(k), "--n", str(args.n), "--data-dir", args.data_dir,
                "--batch-size", str(args.batch_size), "--chunk-size", str(args.chunk_size),
                "--repeats", str(args.repeats), "--compile", args.compile]
        argv += [] if args.heap_tuning else ["--no-heap-tuning"]
        argv += ["--run-dir", args.run_dir] if args.run_dir else []
        done = subprocess.run(argv, stdout=subprocess.PIPE, text=True, check=True)
        cases.append(json.loads(done.stdout.strip().splitlines()[-1]))
        c = cases[-1]
        log(f"  {c['seconds']} s, {c['gflops_executed']} GFLOP/s vs matmul {c['matmul_gflops']} (ratio "
            f"{c['ratio_to_matmul']}, median of batches {c['ratio_median_of_batches']}), peak RSS {c['max_rss_mb']} MB")
    report = {"command": command, "machine": machine(), "weights": args.run_dir or "random (default architecture)",
              "cases": cases}
    if args.no_save:
        print(json.dumps(report))
    else:
        write_results("evaluate" if args.n == 500 else f"evaluate_n{args.n}", report, markdown(report), args.results)
    return 0


if __name__ == "__main__":
    sys.exit(main())

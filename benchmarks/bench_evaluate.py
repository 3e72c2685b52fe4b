"""Throughput and memory of the log p(x) evaluator (pyrovae.evaluate) on MNIST.

The model is the default architecture, encoder 784-400-(2x50) and decoder 50-400-784 with a
Bernoulli likelihood, with random weights (throughput does not depend on training); pass
``--run-dir`` to time a trained run instead. The test images are binarized once (seed 0).

For each K (default 50, 500, 5000) a fresh subprocess evaluates N test points and reports:

- GFLOP/s of the evaluator, from the matmul FLOPs it executes: 2 * fan_in * fan_out per
  layer, the decoder once per (datapoint, particle), the encoder once per (datapoint, chunk).
  The "nominal" count charges the encoder per particle too (2x the executed count here).
- GFLOP/s of a plain torch matmul of the decoder's shapes, [chunk*batch, 50] @ [50, 400] and
  [chunk*batch, 400] @ [400, 784], timed in the same process (median of repeats before and
  after the evaluation), and the ratio.
- the process's peak RSS (ru_maxrss): flat in K when the chunking works.

Each case runs with glibc's default allocator settings and, with ``--malloc both`` (default),
again with MALLOC_MMAP_THRESHOLD_/MALLOC_TRIM_THRESHOLD_ raised so freed decoder buffers stay
in the heap instead of being returned to the OS and page-faulted anew every chunk.

Usage:
    python benchmarks/bench_evaluate.py --data-dir ../shared/data            # N=500
    python benchmarks/bench_evaluate.py --data-dir ../shared/data --n 10000  # full test set

One JSON object goes to stdout, progress to stderr; results/evaluate.json and
results/evaluate.md are written next to this script.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"
DATA_DIR_ENV = "PYROVAE_DATA_DIR"
TUNED_MALLOC = {"MALLOC_MMAP_THRESHOLD_": str(1 << 30), "MALLOC_TRIM_THRESHOLD_": str(1 << 30)}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def load_test_images(data_dir: str, n: int) -> torch.Tensor:
    import torchvision

    test = torchvision.datasets.MNIST(data_dir, train=False, download=False)
    probs = test.data[:n].reshape(-1, 784).float() / 255.0
    return torch.bernoulli(probs, generator=torch.Generator().manual_seed(0))


def build_vae(run_dir: str | None):
    if run_dir:
        from pyrovae.train import load_run  # only needed for a trained run

        return load_run(run_dir, device="cpu").vae
    from pyrovae.guides import AmortizedGuide
    from pyrovae.model import VAE, Decoder

    torch.manual_seed(0)
    return VAE(Decoder(50, 784, hidden=(400,)), AmortizedGuide(784, 50, hidden=(400,)))


def layer_flops(module: torch.nn.Module) -> int:
    """2 * Σ fan_in * fan_out over the Linear layers: matmul FLOPs per input row."""
    return sum(2 * m.in_features * m.out_features for m in module.modules() if isinstance(m, torch.nn.Linear))


def matmul_seconds(rows: int, latent: int, hidden: int, pixels: int, repeats: int) -> list[float]:
    """Times of [rows, latent] @ [latent, hidden] plus [rows, hidden] @ [hidden, pixels]."""
    z, w1 = torch.randn(rows, latent), torch.randn(latent, hidden)
    h, w2 = torch.randn(rows, hidden), torch.randn(hidden, pixels)
    times = []
    for _ in range(repeats + 1):  # the first is a warm-up
        start = time.perf_counter()
        torch.mm(z, w1)
        torch.mm(h, w2)
        times.append(time.perf_counter() - start)
    return times[1:]


def worker(args: argparse.Namespace) -> dict:
    """One K case, in its own process: the matmul reference, the evaluator, the reference again."""
    from pyrovae.evaluate import estimate_log_likelihood

    x = load_test_images(args.data_dir, args.n)
    vae = build_vae(args.run_dir)
    n, k = len(x), args.k
    rows = min(k, args.chunk_size) * min(n, args.batch_size)
    shape = (rows, vae.latent_dim, vae.decoder.net[0].out_features, x.shape[1])
    reference = matmul_seconds(*shape, args.repeats)  # before and after: the machine may be shared
    baseline_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # libraries and data
    estimate_log_likelihood(vae, x[:2], k=min(args.k, args.chunk_size))  # warm-up: lazy imports
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    result = estimate_log_likelihood(vae, x, k=args.k, batch_size=args.batch_size, chunk_size=args.chunk_size,
                                     progress=sys.stderr.isatty())
    seconds = time.perf_counter() - start
    max_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    reference += matmul_seconds(*shape, args.repeats)
    matmul_gflops = 2 * rows * (shape[1] * shape[2] + shape[2] * shape[3]) / statistics.median(reference) / 1e9
    chunks = math.ceil(k / args.chunk_size)
    decoder, encoder = layer_flops(vae.decoder), layer_flops(vae.guide_module)
    executed = n * k * decoder + n * chunks * encoder
    nominal = n * k * (decoder + encoder)
    summary = result.summary()
    return {
        "k": k, "n": n, "batch_size": args.batch_size, "chunk_size": args.chunk_size, "rows_per_chunk": rows,
        "seconds": round(seconds, 3),
        "points_per_second": round(n / seconds, 2),
        "particles_per_second": round(n * k / seconds),
        "gflops_executed": round(executed / seconds / 1e9, 2),
        "gflops_nominal": round(nominal / seconds / 1e9, 2),
        "matmul_gflops": round(matmul_gflops, 2),
        "ratio_to_matmul": round(executed / seconds / 1e9 / matmul_gflops, 3),
        "max_rss_mb": round(max_rss_mb, 1),
        "baseline_rss_mb": round(baseline_rss_mb, 1),
        "load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "log_likelihood": round(summary["log_likelihood"], 3),
        "khat_frac_gt_0_7": summary["khat_frac_gt_0_7"],
    }


def machine() -> dict:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    import pyro

    return {"platform": platform.platform(), "cpu": model, "cpu_count": os.cpu_count(),
            "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
            "python": platform.python_version(), "torch": torch.__version__, "pyro": pyro.__version__,
            "torch_threads": torch.get_num_threads(), "mkl": torch.backends.mkl.is_available()}


def markdown(report: dict) -> str:
    lines = [f"# Evaluator throughput (`{report['command']}`)", "",
             "| K | N | malloc | s | points/s | GFLOP/s executed | GFLOP/s nominal | matmul GFLOP/s | ratio "
             "| peak RSS MB (before evaluating) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for c in report["cases"]:
        lines.append(f"| {c['k']} | {c['n']} | {c['malloc']} | {c['seconds']} | {c['points_per_second']} | "
                     f"{c['gflops_executed']} | "
                     f"{c['gflops_nominal']} | {c['matmul_gflops']} | {c['ratio_to_matmul']} | {c['max_rss_mb']} "
                     f"({c['baseline_rss_mb']}) |")
    m = report["machine"]
    lines += ["", f"Machine: {m['cpu']}, {m['cpus_usable']} usable CPUs, torch {m['torch']} "
                  f"({m['torch_threads']} threads), {m['platform']}.",
              "Executed FLOPs: decoder per (point, particle), encoder per (point, chunk); nominal charges the "
              "encoder per particle. Ratio = executed GFLOP/s / matmul GFLOP/s of the decoder's shapes in the "
              "same process. The 1-min load average before/after each case is in evaluate.json.",
              "malloc: glibc defaults, or tuned = " + ", ".join(f"{k}={v}" for k, v in report["tuned_malloc"].items())
              + " (freed buffers stay in the heap: no page faults on every chunk).", ""]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=os.environ.get(DATA_DIR_ENV),
                        help=f"folder holding MNIST/raw (torchvision layout); default ${DATA_DIR_ENV}")
    parser.add_argument("--n", type=int, default=500, help="test points (10000 = the full test set)")
    parser.add_argument("--ks", default="50,500,5000", help="comma-separated numbers of importance samples")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--chunk-size", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=7,
                        help="repeats of the matmul reference, before and after the evaluation each")
    parser.add_argument("--malloc", choices=["default", "tuned", "both"], default="both",
                        help="glibc allocator settings of the worker processes (see above)")
    parser.add_argument("--run-dir", help="time a trained run (pyrovae fit --out) instead of random weights")
    parser.add_argument("--no-save", action="store_true", help="do not write results/evaluate.{json,md}")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--k", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        print(json.dumps(worker(args)))
        return 0
    if not args.data_dir or not (Path(args.data_dir) / "MNIST" / "raw").is_dir():
        log(f"skipped: MNIST not found; pass --data-dir (or set {DATA_DIR_ENV}) to a folder holding MNIST/raw")
        print(json.dumps({"skipped": "MNIST not found"}))
        return 0
    command = "python benchmarks/bench_evaluate.py " + " ".join(sys.argv[1:])
    cases = []
    mallocs = ["default", "tuned"] if args.malloc == "both" else [args.malloc]
    for k in (int(v) for v in args.ks.split(",")):
        for malloc in mallocs:
            log(f"K={k}, N={args.n}, {malloc} malloc: running in a fresh process ...")
            argv = [sys.executable, __file__, "--worker", "--k", str(k), "--n", str(args.n),
                    "--data-dir", args.data_dir, "--batch-size", str(args.batch_size),
                    "--chunk-size", str(args.chunk_size), "--repeats", str(args.repeats)]
            argv += ["--run-dir", args.run_dir] if args.run_dir else []
            env = {**os.environ, **(TUNED_MALLOC if malloc == "tuned" else {})}
            done = subprocess.run(argv, stdout=subprocess.PIPE, text=True, check=True, env=env)
            cases.append({"malloc": malloc, **json.loads(done.stdout.strip().splitlines()[-1])})
            c = cases[-1]
            log(f"  {c['seconds']} s, {c['gflops_executed']} GFLOP/s vs matmul {c['matmul_gflops']} "
                f"(ratio {c['ratio_to_matmul']}), peak RSS {c['max_rss_mb']} MB")
    report = {"command": command, "machine": machine(), "weights": args.run_dir or "random (default architecture)",
              "tuned_malloc": TUNED_MALLOC, "cases": cases}
    if not args.no_save:
        from pyrovae.runs import atomic_path

        RESULTS.mkdir(exist_ok=True)
        for name, text in (("evaluate.json", json.dumps(report, indent=2) + "\n"), ("evaluate.md", markdown(report))):
            with atomic_path(RESULTS / name) as tmp:
                tmp.write_text(text)
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())

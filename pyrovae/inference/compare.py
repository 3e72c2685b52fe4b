"""Where the ELBO loses to log p(x): amortization vs approximation (Cremer, Li & Duvenaud 2018,
"Inference Suboptimality in Variational Autoencoders").

For each evaluated x_i, with the model frozen:

    L[q]    the ELBO of the run's own q: the encoder's q_φ(z | x_i) (an amortized guide, Gaussian
            or flow), or the trained rows of a per-datapoint guide (training points)
    L[q*]   the ELBO of the best member of the guide's per-point family, fitted per point
            (:mod:`.local_fit`: diagonal Gaussians, or per-point flows for a flow guide)
    log p̂   importance sampling with q* as the proposal, K draws (:mod:`pyrovae.evaluation.importance`)

    amortization gap  = L[q*] - L[q]       (the encoder's, or unfinished per-row SVI's, share)
    approximation gap = log p̂ - L[q*]      (the family's share)
    inference gap     = log p̂ - L[q]       = amortization gap + approximation gap

q* is the better, per point, of two fits: one started at N(0, I) and one started at q (for
amortized runs, the encoder: semi-amortized refinement, Kim et al. 2018). The choice uses the
fits' own ELBO estimates; the reported L[q*] is re-estimated with fresh draws, so picking the
max does not bias it upward. For points without a trained q (test points of a per-datapoint
guide), q is the fit from N(0, I) itself, so the amortization gap is 0 by construction.

Every ELBO uses the closed-form KL where exact and ``eval_samples`` reconstruction draws.
Standard errors are std / sqrt(n) of the per-point values (of the per-point differences, for
the gaps): the spread over the evaluated points, which also contains the Monte Carlo noise.
log p̂ ≤ log p in expectation, so the approximation gap is, if anything, underestimated.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core import interrupts
from ..core.errors import option
from ..core.noise import tile_seed
from ..core.programs import Data, as_batch, bind, num_rows, rows_of
from ..core.vae import VAE
from ..evaluation import diagnostics
from ..evaluation.ais import CHAINS, LEAPFROG, ais_batch
from ..evaluation.ais import STEPS as AIS_STEPS
from ..evaluation.driver import Partial, run_batches
from ..evaluation.importance import CHUNK_SIZE, _progress, importance_batch, result_from_values
from ..guides.rows import select_rows
from .local_fit import elbo_per_point, fit_local

DEFAULT_REFINE_STEPS = 20   # Kim et al. (2018) refine the encoder's q with ~20 SVI steps
BATCH_SIZE = 250            # points fitted together: a unit of work an interrupt keeps


def compare_inference(run: Any, data: Data, index: torch.Tensor | None = None, k: int = 5000,
                      steps: int = 3000, lr: float = 0.05, refine_steps: int = DEFAULT_REFINE_STEPS,
                      tol: float = 0.01, eval_samples: int = 100, batch_size: int = BATCH_SIZE, seed: int = 0,
                      progress: bool = False, partial_path: str | Path | None = None, resume: bool = False,
                      options: dict | None = None, log_px: str = "is", ais_steps: int = AIS_STEPS,
                      chains: int = CHAINS, leapfrog: int = LEAPFROG) -> dict:
    """The gaps of Cremer et al. (2018) for the rows of ``data``; means and SEs in nats.

    ``run``: a :class:`~pyrovae.training.Run` or a :class:`~pyrovae.vae.VAE`. ``index``: for a
    per-datapoint guide, the rows of its trained tables that ``data`` holds (training points);
    without it the points have no trained q. ``steps``/``lr``/``tol``: the test-time fit (at
    most ``steps`` Adam steps); ``refine_steps``: the fixed budget of the semi-amortized
    refinement. ``log_px``: ``"is"`` (K importance samples from q*) or ``"ais"`` (annealed from q*
    with ``ais_steps``, ``chains`` and ``leapfrog``, as Cremer et al. did). Points are processed
    ``batch_size`` at a time, each batch seeded by its first row: an interrupted comparison saves
    its finished batches in ``partial_path``, and ``resume`` continues from them to the numbers of
    an uninterrupted run.
    """
    if log_px not in ("is", "ais"):
        raise ValueError(f"log_px must be 'is' or 'ais', got {log_px!r}")
    vae: VAE = getattr(run, "vae", run)
    data = tuple(t.to(device=vae.device, dtype=vae.dtype if t.is_floating_point() else t.dtype)
                 for t in as_batch(data))
    n = num_rows(data)
    amortized = vae.can("amortized")
    has_q = amortized or index is not None
    q_name = "encoder" if amortized else "trained rows" if has_q else "test-time fit (no trained parameters)"
    model = vae.bound()[0]
    fit_options = dict(lr=lr, tol=tol, eval_samples=eval_samples)
    unsupported: set[str] = set()
    seconds: dict[str, float] = {}
    family: dict[str, str] = {}   # the per-point family of q*, e.g. MeanFieldGuide or PerPointFlowGuide

    def timed(name: str, work):
        started = time.perf_counter()
        result = work()
        seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - started
        return result

    def evaluate(rows: range) -> dict[str, np.ndarray]:
        batch = rows_of(data, rows)
        rows_index = None if index is None else index[rows.start:rows.stop]
        batch_seed = tile_seed(seed, rows.start)
        options_b = dict(batch_size=len(rows), **fit_options)
        fits = {"from_prior": timed("from_prior", lambda: fit_local(vae, batch, "prior", max_steps=steps,
                                                                     seed=batch_seed, **options_b))}
        if has_q:
            fits["from_q"] = timed("from_q", lambda: fit_local(vae, batch, "q", index=rows_index, max_steps=steps,
                                                               seed=batch_seed + 1, **options_b))
        if amortized and refine_steps > 0:   # a fixed budget, no stopping rule
            fits["refined"] = timed("refined", lambda: fit_local(vae, batch, "q", max_steps=refine_steps,
                                                                 seed=batch_seed + 2, **{**options_b, "tol": None}))
        # q* per point: the better fit by its own estimate; its ELBO re-estimated on fresh draws
        best, use_prior_fit = fits["from_prior"].guide, torch.ones(len(rows), dtype=torch.bool)
        if "from_q" in fits:
            use_prior_fit = fits["from_prior"].elbo >= fits["from_q"].elbo
            best = select_rows(use_prior_fit, fits["from_prior"].guide, fits["from_q"].guide)
        devices = [vae.device] if vae.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(batch_seed + 3)
            elbo_star = elbo_per_point(vae, batch, best, eval_samples)
            elbo_q = (elbo_per_point(vae, batch, vae.guide, eval_samples, index=rows_index) if has_q
                      else elbo_star)
        family["name"] = type(best).__name__
        local = torch.arange(len(rows), device=batch[0].device)
        if log_px == "ais":
            values = timed("log_likelihood", lambda: ais_batch(
                vae, bind(best), batch, local, rows, ais_steps, chains, leapfrog, seed, progress=_check,
                unsupported=unsupported))
            values.pop("log_w")
        else:
            values = timed("log_likelihood", lambda: importance_batch(
                model, bind(best), batch, local, rows, k, CHUNK_SIZE, seed, False, unsupported, encodes=False))
        values.update(elbo_q=elbo_q, elbo_optimized=elbo_star, use_prior_fit=use_prior_fit.float(),
                      **{f"steps_{name}": torch.full((len(rows),), float(max(fit.steps))) for name, fit in fits.items()})
        if "refined" in fits:
            values["elbo_refined"] = fits["refined"].elbo
        return {name: torch.as_tensor(v).detach().cpu().double().numpy() if not isinstance(v, np.ndarray) else v
                for name, v in values.items()}

    options = {"command": "compare", "log_px": log_px, "k": k, "ais_steps": ais_steps, "chains": chains,
               "leapfrog": leapfrog, "steps": steps, "lr": lr, "refine_steps": refine_steps, "tol": tol,
               "eval_samples": eval_samples, "batch_size": batch_size, "seed": seed, "n": n, **(options or {})}
    path = Path(partial_path) if partial_path else None
    partial = Partial.load(path, n, options) if resume and path else Partial(n, options, path)
    report = _progress(progress, n, "compare")
    try:
        with vae.param_store():
            values = run_batches(n, batch_size, evaluate, partial, report)
    finally:
        report.close()
    partial.discard()

    log_px_hat, elbo_star, elbo_q = (torch.from_numpy(values[key]) for key in ("log_px", "elbo_optimized", "elbo_q"))
    per_point = {
        "log_likelihood": log_px_hat,
        "elbo_q": elbo_q,
        "elbo_optimized": elbo_star,
        "amortization_gap": elbo_star - elbo_q,
        "approximation_gap": log_px_hat - elbo_star,
        "inference_gap": log_px_hat - elbo_q,
    }
    if amortized:
        per_point["elbo_amortized"] = elbo_q   # L[q] of the encoder, under the name of the paper's table
    if "elbo_refined" in values:
        per_point["elbo_refined"] = torch.from_numpy(values["elbo_refined"])
    table: dict[str, Any] = {"n": n, "q": q_name, "log_px": log_px, "family": family.get("name"),
                             **({"k": k} if log_px == "is" else {"ais_steps": ais_steps, "chains": chains,
                                                                 "leapfrog": leapfrog})}
    for name, column in per_point.items():
        table[name], table[f"{name}_se"] = diagnostics.mean_and_se(column)
    table.update({
        "optimized_from_prior_frac": float(values["use_prior_fit"].mean()),
        "steps": {key[len("steps_"):]: int(values[key].max()) for key in values if key.startswith("steps_")},
        "seconds": {name: round(value, 3) for name, value in seconds.items()},
        "chunk_invariant": not unsupported,
    })
    if log_px == "is":
        summary = result_from_values(values, k, "fit", vae.check(data).data_dim, not unsupported).summary(
            ais_option=option("log-px", "ais"))
        table.update({key: summary[key] for key in ("khat_frac_gt_0_7", "reliable", "warning")})
    else:
        table.update({"accept_rate_mean": float(values["accept_rate"].mean()),
                      "chain_ess_frac_mean": float(values["chain_ess"].mean()), "warning": None})
    return table


def _check(t: int, total: int) -> None:
    interrupts.check()   # a signal drops the batch under way at once: the finished ones are kept


ROWS = [("log p̂(x)", "log_likelihood"), ("L[q]", "elbo_q"), ("L[q refined]", "elbo_refined"),
        ("L[q*]", "elbo_optimized"), ("amortization gap", "amortization_gap"),
        ("approximation gap", "approximation_gap"), ("inference gap", "inference_gap")]


def format_table(table: dict, title: str = "") -> str:
    """A readable table of one comparison: value ± SE, in nats."""
    how = f"K = {table['k']}" if table.get("log_px", "is") == "is" else f"AIS T = {table['ais_steps']}"
    lines = [f"{title}  (n = {table['n']}, q = {table['q']}, {how})".strip()]
    for label, key in ROWS:
        if key in table:
            lines.append(f"  {label:<18} {table[key]:>10.3f} ± {table[key + '_se']:.3f}")
    lines.append("  steps " + ", ".join(f"{name} {value}" for name, value in table["steps"].items()))
    if table.get("warning"):
        lines.append(f"  warning: {table['warning']}")
    return "\n".join(lines)

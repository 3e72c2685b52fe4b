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

import sys
import time
from typing import Any

import torch
from ..programs import Data
from ..evaluation import diagnostics
from ..evaluation.importance import estimate_log_likelihood
from ..guides.rows import select_rows
from ..programs import as_batch, num_rows
from ..vae import VAE
from .local_fit import elbo_per_point, fit_local

DEFAULT_REFINE_STEPS = 20   # Kim et al. (2018) refine the encoder's q with ~20 SVI steps


def compare_inference(run: Any, data: Data, index: torch.Tensor | None = None, k: int = 5000,
                      steps: int = 3000, lr: float = 0.05, refine_steps: int = DEFAULT_REFINE_STEPS,
                      tol: float = 0.01, eval_samples: int = 100, batch_size: int = 1000, seed: int = 0,
                      progress: bool = False) -> dict:
    """The gaps of Cremer et al. (2018) for the rows of ``data``; means and SEs in nats.

    ``run``: a :class:`~pyrovae.training.Run` or a :class:`~pyrovae.vae.VAE`. ``index``: for a
    per-datapoint guide, the rows of its trained tables that ``data`` holds (training points);
    without it the points have no trained q. ``steps``/``lr``/``tol``: the test-time fit (at
    most ``steps`` Adam steps); ``refine_steps``: the fixed budget of the semi-amortized refinement.
    """
    vae: VAE = getattr(run, "vae", run)
    data = tuple(t.to(device=vae.device, dtype=vae.dtype if t.is_floating_point() else t.dtype)
                 for t in as_batch(data))
    n = num_rows(data)
    amortized = vae.can("amortized")
    has_q = amortized or index is not None
    q_name = "encoder" if amortized else "trained rows" if has_q else "test-time fit (no trained parameters)"
    say = _Say(progress)
    fit_options = dict(lr=lr, tol=tol, batch_size=batch_size, eval_samples=eval_samples,
                       progress=say.bar("fit") if progress else None)

    say(f"fit q* from N(0, I) for {n} points")
    from_prior = fit_local(vae, data, "prior", max_steps=steps, seed=seed, **fit_options)
    fits = {"from_prior": from_prior}
    if has_q:
        say(f"fit q* from the {q_name}")
        fits["from_q"] = fit_local(vae, data, "q", index=index, max_steps=steps, seed=seed + 1, **fit_options)
    if amortized and refine_steps > 0:
        say(f"refine the encoder's q for {refine_steps} steps")
        fits["refined"] = fit_local(vae, data, "q", max_steps=refine_steps, seed=seed + 2,
                                    **{**fit_options, "tol": None})   # a fixed budget, no stopping rule

    # q* per point: the better fit by its own estimate; its ELBO re-estimated on fresh draws
    best = from_prior.guide
    use_prior_fit = torch.ones(n, dtype=torch.bool, device=data[0].device)
    if "from_q" in fits:
        use_prior_fit = from_prior.elbo >= fits["from_q"].elbo
        best = select_rows(use_prior_fit, from_prior.guide, fits["from_q"].guide)
    devices = [vae.device] if vae.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed + 3)
        elbo_star = elbo_per_point(vae, data, best, eval_samples)
        elbo_q = elbo_per_point(vae, data, vae.guide, eval_samples, index=index) if has_q else elbo_star

    say(f"log p(x) by importance sampling from q*, K = {k}")
    started = time.perf_counter()
    ll = estimate_log_likelihood(vae, data, k=k, proposal=best, seed=seed, progress=progress)
    ll_seconds = time.perf_counter() - started
    log_px = torch.from_numpy(ll.log_px)
    elbo_star, elbo_q = elbo_star.double().cpu(), elbo_q.double().cpu()

    per_point = {
        "log_likelihood": log_px,
        "elbo_q": elbo_q,
        "elbo_optimized": elbo_star,
        "amortization_gap": elbo_star - elbo_q,
        "approximation_gap": log_px - elbo_star,
        "inference_gap": log_px - elbo_q,
    }
    if amortized:
        per_point["elbo_amortized"] = elbo_q   # L[q] of the encoder, under the name of the paper's table
    if "refined" in fits:
        per_point["elbo_refined"] = fits["refined"].elbo.double().cpu()
    table: dict[str, Any] = {"n": n, "q": q_name, "k": k, "family": type(best).__name__}
    for name, values in per_point.items():
        table[name], table[f"{name}_se"] = diagnostics.mean_and_se(values)
    summary = ll.summary()
    table.update({
        "optimized_from_prior_frac": float(use_prior_fit.float().mean()),
        "steps": {name: max(fit.steps) for name, fit in fits.items()},
        "seconds": {**{name: round(fit.seconds, 3) for name, fit in fits.items()},
                    "log_likelihood": round(ll_seconds, 3)},
        "khat_frac_gt_0_7": summary["khat_frac_gt_0_7"],
        "reliable": summary["reliable"],
        "warning": summary["warning"],
    })
    return table


ROWS = [("log p̂(x)", "log_likelihood"), ("L[q]", "elbo_q"), ("L[q refined]", "elbo_refined"),
        ("L[q*]", "elbo_optimized"), ("amortization gap", "amortization_gap"),
        ("approximation gap", "approximation_gap"), ("inference gap", "inference_gap")]


def format_table(table: dict, title: str = "") -> str:
    """A readable table of one comparison: value ± SE, in nats."""
    lines = [f"{title}  (n = {table['n']}, q = {table['q']}, K = {table['k']})".strip()]
    for label, key in ROWS:
        if key in table:
            lines.append(f"  {label:<18} {table[key]:>10.3f} ± {table[key + '_se']:.3f}")
    lines.append("  steps " + ", ".join(f"{name} {value}" for name, value in table["steps"].items()))
    if table.get("warning"):
        lines.append(f"  warning: {table['warning']}")
    return "\n".join(lines)


class _Say:
    """Phase messages and progress bars on stderr, when enabled."""

    def __init__(self, enabled: bool):
        self.enabled = enabled

    def __call__(self, message: str) -> None:
        if self.enabled:
            print(f"compare: {message}", file=sys.stderr)

    def bar(self, desc: str):
        from tqdm import tqdm
        state: dict = {}

        def update(done: int, total: int) -> None:
            if "bar" not in state:
                state["bar"] = tqdm(total=total, unit="pt", desc=desc, leave=False, file=sys.stderr)
            state["bar"].update(done - state["bar"].n)
            if done >= total:
                state.pop("bar").close()
        return update

"""Mean-field VI: the row-sparse Adam of training, and the test-time fit of q* checked against
the closed form of a linear-Gaussian model."""
import math

import torch

from pyrovae import runs
from pyrovae.config import FitConfig, build_vae
from pyrovae.guides import AmortizedGuide
from pyrovae.inference.local_fit import elbo_per_point, fit_local
from pyrovae.models import VAEModel
from pyrovae.programs import LatentLayer
from pyrovae.vae import VAE
from pyrovae.objectives import make_objective
from pyrovae.training.optim import RowSparseAdam, make_optimizer
from pyrovae.training import fit



# ---------------------------------------------------------------------------- RowSparseAdam

def test_dense_parameters_follow_torch_adam():
    torch.manual_seed(0)
    ours, theirs = torch.randn(3, 4, requires_grad=True), None
    theirs = ours.detach().clone().requires_grad_(True)
    opt_ours, opt_theirs = RowSparseAdam([ours], lr=0.1), torch.optim.Adam([theirs], lr=0.1)
    for _ in range(5):
        grad = torch.randn(3, 4)
        for param, opt in ((ours, opt_ours), (theirs, opt_theirs)):
            opt.zero_grad()
            param.grad = grad.clone()
            opt.step()
    # torch computes the bias corrections in float64, ours per row in float32
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)


def test_row_sparse_rows_move_only_with_their_gradient():
    torch.manual_seed(0)
    table = torch.randn(6, 3, requires_grad=True)
    optimizer = RowSparseAdam([table], row_sparse=[table], lr=0.1)
    alone = table.detach()[4:5].clone().requires_grad_(True)   # row 4 optimized on its own
    alone_opt = torch.optim.Adam([alone], lr=0.1)
    for rows in ([0, 4], [1, 2], [4, 5]):
        before = table.detach().clone()
        grad = torch.zeros(6, 3)
        grad[rows] = torch.randn(len(rows), 3)
        table.grad = grad
        optimizer.step()
        untouched = [i for i in range(6) if i not in rows]
        assert torch.equal(table.detach()[untouched], before[untouched])
        assert (table.detach()[rows] != before[rows]).all()
        if 4 in rows:
            alone.grad = grad[4:5].clone()
            alone_opt.step()
    # row 4 had 2 steps: it matches Adam run on those steps alone (per-row bias correction)
    torch.testing.assert_close(table.detach()[4:5], alone.detach(), rtol=1e-5, atol=1e-6)
    assert optimizer.state[table]["step"].tolist() == [1, 1, 1, 0, 2, 1]


def test_meanfield_step_changes_only_minibatch_rows():
    torch.manual_seed(0)
    config = FitConfig(guide="meanfield", latent_dim=3, hidden=(8,))
    vae = build_vae(config, data_dim=10, num_train=20)
    optimizer, objective = make_optimizer(vae, lr=0.01), make_objective("trace")
    x = torch.rand(20, 10).bernoulli()
    decoder_before = vae.model.decoder[0].weight.detach().clone()
    for index in (torch.tensor([0, 3, 7]), torch.tensor([1, 3, 9])):   # the second step has momentum
        before = {name: p.detach().clone() for name, p in vae.guide.named_parameters()}
        loss = objective.differentiable_loss(*vae.bound(), index, 1.0, x[index], num_data=20)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        others = torch.tensor([i for i in range(20) if i not in index.tolist()])
        for name, param in vae.guide.named_parameters():
            assert torch.equal(param.detach()[others], before[name][others]), name
            assert (param.detach()[index] != before[name][index]).any(), name
    assert not torch.equal(vae.model.decoder[0].weight, decoder_before)   # the decoder is dense Adam


def test_meanfield_training_improves_and_checkpoints(tmp_path):
    config = FitConfig(dataset="mnist-sample", guide="meanfield", epochs=3, hidden=(32,), latent_dim=4,
                       batch_size=250, lr=3e-3, eval_train_points=1000, seed=0)
    fit(config, tmp_path / "run", progress=False)
    metrics = runs.read_jsonl(tmp_path / "run" / runs.METRICS)
    assert metrics[-1]["train_elbo"] > metrics[0]["train_elbo"] + 5   # nats; the gain is ~tens of nats
    state = runs.load_checkpoint(tmp_path / "run", map_location="cpu")   # weights_only=True
    steps = [s["step"] for s in state["optimizer"]["state"].values() if s["step"].dim() == 1]
    # each row is stepped only with its batch: (local_steps + 1) steps per epoch
    per_epoch = config.local_steps + 1
    assert len(steps) == 2 and all(torch.equal(s, torch.full((5000,), 3.0 * per_epoch)) for s in steps)


# ---------------------------------------------------------------------------- test-time fit vs closed form

D, LATENT, SIGMA = 5, 2, 0.5
W = torch.tensor([[1.0, 0.8], [0.5, 1.0], [-0.3, 0.6], [0.9, 0.2], [0.0, -0.7]])   # non-orthogonal columns
B = torch.linspace(-0.5, 0.5, D)


def linear_gaussian_vae() -> VAE:
    model = VAEModel(LATENT, D, hidden=(), likelihood="normal", sigma=SIGMA)
    with torch.no_grad():
        model.decoder[0].weight.copy_(W)
        model.decoder[0].bias.copy_(B)
    return VAE(model, AmortizedGuide([LatentLayer("z", LATENT, "x", ())], D))


def optimal_diagonal_q(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """q* for x = W z + b + σ ε: the posterior mean, and precisions diag(I + WᵀW / σ²)."""
    precision = torch.eye(LATENT) + W.T @ W / SIGMA ** 2
    mean = (x - B) @ W @ torch.linalg.inv(precision) / SIGMA ** 2
    return mean, precision.diag().rsqrt().expand_as(mean)


def exact_elbo(x: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """E_q log N(x; W z + b, σ²) - KL(q || N(0, I)), in closed form."""
    var = scale ** 2
    residual = ((x - loc @ W.T - B) ** 2).sum(-1) + (var * (W ** 2).sum(0)).sum(-1)
    recon = -0.5 * D * math.log(2 * math.pi * SIGMA ** 2) - residual / (2 * SIGMA ** 2)
    kl = 0.5 * (loc ** 2 + var - 1 - var.log()).sum(-1)
    return recon - kl


def test_posterior_marginals_differ_from_q_star():
    precision = torch.eye(LATENT) + W.T @ W / SIGMA ** 2
    assert (torch.linalg.inv(precision).diag().sqrt() / precision.diag().rsqrt() > 1.1).all()


def test_fit_converges_to_closed_form_q_star():
    torch.manual_seed(0)
    vae = linear_gaussian_vae()
    x = torch.randn(200, D)
    mean, scale = optimal_diagonal_q(x)
    result = fit_local(vae, x, "prior", max_steps=4000, lr=0.05, window=200, tol=1e-3, seed=0)
    # Adam's stationary noise leaves ~2% per-point jitter on the scale, ~0.01 on the mean, unbiased:
    ratio, error = result.scale / scale, result.loc - mean
    n = len(x)
    assert ((ratio.mean(0) - 1).abs() < 4 * ratio.std(0) / math.sqrt(n) + 1e-3).all()
    assert ((error.mean(0)).abs() < 4 * error.std(0) / math.sqrt(n) + 1e-3).all()
    assert ratio.sub(1).abs().max() < 0.15 and error.abs().max() < 0.1
    # the fitted ELBO is within 0.01 nats of the optimum, and never above it (exact arithmetic)
    shortfall = exact_elbo(x, mean, scale) - exact_elbo(x, result.loc, result.scale)
    assert shortfall.min() > -1e-4 and shortfall.mean() < 0.01
    # the returned Monte Carlo ELBO estimates the exact one (100 draws: SE ≈ 0.2 nats per point)
    mc_error = result.elbo - exact_elbo(x, result.loc, result.scale)
    assert mc_error.mean().abs() < 4 * mc_error.std() / math.sqrt(n)


def test_optimized_elbo_beats_an_amortized_q():
    torch.manual_seed(1)
    vae = linear_gaussian_vae()
    x = torch.randn(100, D)
    loc_q, scale_q = vae.guide.encode("z", x)   # an untrained encoder: a poor but valid q
    result = fit_local(vae, x, (loc_q.detach(), scale_q.detach()), max_steps=1500, seed=1)
    gain = result.elbo - elbo_per_point(vae, x, (loc_q.detach(), scale_q.detach()), num_samples=100)
    assert gain.mean() > 4 * gain.std() / math.sqrt(len(x))
    assert (exact_elbo(x, result.loc, result.scale) >= exact_elbo(x, loc_q, scale_q) - 1e-4).all()

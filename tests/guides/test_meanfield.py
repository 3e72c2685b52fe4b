"""Mean-field VI: the row-sparse Adam of training, and the test-time fit of q* checked against
the closed form of a linear-Gaussian model."""
import math

import numpy as np
import pyro
import pytest
import torch
from click.testing import CliRunner
from linear_gaussian import LATENT, SIGMA, D, W, exact_elbo, linear_gaussian_vae, optimal_diagonal_q

from pyrovae import runs
from pyrovae.cli.main import cli
from pyrovae.config import FitConfig, build_vae
from pyrovae.data import load_dataset
from pyrovae.core.vae import VAE
from pyrovae.inference.local_fit import elbo_per_point, fit_local
from pyrovae.objectives import make_objective
from pyrovae.training.optim import RowSparseAdam, make_optimizer
from pyrovae.workflows import fit

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


@pytest.mark.parametrize("jit", [False, True])
def test_local_steps_move_only_the_batch_rows_and_never_the_model(jit):
    """A local step differentiates the joint loss (JIT-compiled or not) with respect to the
    batch's rows only: the model's parameters and their Adam state stay byte-identical, other
    rows never move, the batch's rows do."""
    from pyrovae.training.callbacks import LocalSteps
    from pyrovae.training.step import LossModule, svi_step
    torch.manual_seed(0)
    vae = build_vae(FitConfig(guide="meanfield", latent_dim=3, hidden=(8,)), data_dim=10, num_train=20)
    optimizer = make_optimizer(vae, lr=0.01)
    loss = LossModule(vae, make_objective("meanfield", jit=jit), 20, register=jit)
    x = torch.rand(20, 10).bernoulli()
    beta = torch.tensor(1.0) if jit else 1.0
    svi_step(loss, optimizer, torch.tensor([2, 4, 6]), beta, x[[2, 4, 6]])   # a joint step: the model has Adam state
    model_before = {name: p.detach().clone() for name, p in vae.model.named_parameters()}
    state_before = {name: {k: v.clone() for k, v in optimizer.state[p].items()} for name, p in vae.model.named_parameters()}
    rows_before = {name: p.detach().clone() for name, p in vae.guide.named_parameters()}

    class Trainer:   # what LocalSteps reads
        pass

    Trainer.beta, Trainer.step_beta, Trainer.optimizer = 1.0, beta, optimizer
    index = torch.tensor([0, 3, 7])
    callback = LocalSteps(vae, loss, steps=3, num_data=20)
    callback.before_step(Trainer, index, (x[index],))
    assert callback.taken == 3
    for name, param in vae.model.named_parameters():
        assert torch.equal(param.detach(), model_before[name]), name
        for key, value in optimizer.state[param].items():
            assert torch.equal(value, state_before[name][key]), (name, key)
    others = torch.tensor([i for i in range(20) if i not in index.tolist()])
    for name, param in vae.guide.named_parameters():
        assert torch.equal(param.detach()[others], rows_before[name][others]), name
        assert (param.detach()[index] != rows_before[name][index]).all(), name


def test_meanfield_training_improves_and_checkpoints(tmp_path):
    digits = load_dataset("mnist-sample")   # 1000 of its training rows (and 100 test rows for the test-time fit)
    np.savez(tmp_path / "digits.npz", train=digits.train[:1000].numpy(), test=digits.test[:100].numpy())
    config = FitConfig(dataset=str(tmp_path / "digits.npz"), guide="meanfield", epochs=3, hidden=(32,), latent_dim=4,
                       batch_size=100, lr=3e-3, eval_train_points=1000, seed=0)
    fit(config, tmp_path / "run", progress=False)
    metrics = runs.read_jsonl(tmp_path / "run" / runs.METRICS)
    assert metrics[-1]["train_elbo"] > metrics[0]["train_elbo"] + 5   # nats; the gain is 179 nats here
    state = runs.load_checkpoint(tmp_path / "run", map_location="cpu")   # weights_only=True
    steps = [s["step"] for s in state["optimizer"]["state"].values() if s["step"].dim() == 1]
    # each row is stepped only with its batch: (local_steps + 1) steps per epoch
    per_epoch = config.local_steps + 1
    assert len(steps) == 2 and all(torch.equal(s, torch.full((1000,), 3.0 * per_epoch)) for s in steps)


# ---------------------------------------------------------------------------- test-time fit vs closed form

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


# ---------------------------------------------------------------------------- the fast, fair baseline (issue 13)

def _tables_and_optimizer(sparse: bool, decay: float = 0.0):
    torch.manual_seed(0)
    config = FitConfig(guide="meanfield", latent_dim=3, hidden=(8,))
    vae = build_vae(config, data_dim=10, num_train=30)
    vae.guide.sparse = sparse
    return vae, make_optimizer(vae, lr=0.01, local_lr=0.1, local_lr_decay=decay)


def test_sparse_row_gradients_equal_the_dense_path_adam_state_included():
    """Tables read through F.embedding(sparse=True) give a gradient that holds the batch's rows
    only; RowSparseAdam's update from it equals the dense path's, to the last bit."""
    runs = {}
    x = torch.rand(30, 10, generator=torch.Generator().manual_seed(1)).bernoulli()
    for sparse in (True, False):
        vae, optimizer = _tables_and_optimizer(sparse)
        objective = make_objective("meanfield")
        for step, index in enumerate([torch.tensor([0, 3, 7]), torch.tensor([1, 3, 29]), torch.tensor([5, 0, 2])]):
            pyro.set_rng_seed(step)
            loss = objective.differentiable_loss(*vae.bound(), index, 1.0, x[index], num_data=30)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            table = vae.guide.loc["z"]
            assert table.grad.is_sparse == sparse
            if sparse:   # nothing of size N: the batch's three rows
                assert table.grad.coalesce().values().shape == (3, 3)
            optimizer.step()
        runs[sparse] = (vae.state_dict(), optimizer.state_dict()["state"])
    (params_s, state_s), (params_d, state_d) = runs[True], runs[False]
    for key in params_s:
        assert torch.equal(params_s[key], params_d[key]), key
    for i in state_s:
        for key in state_s[i]:
            assert torch.equal(torch.as_tensor(state_s[i][key]), torch.as_tensor(state_d[i][key])), (i, key)
    # rows 4, 6, 8.. never in a batch never moved; row 3 and 0 took two steps
    steps = next(s["step"] for s in state_s.values() if s["step"].dim() == 1)
    assert steps[[0, 3]].tolist() == [2.0, 2.0] and steps[4].item() == 0.0


def test_per_row_learning_rate_decays_with_the_rows_own_steps():
    """lr_i = local_lr (1 + t_i)^-κ: a row's first step (t = 0) is at local_lr, its second at
    local_lr / 2^κ; Adam's first step moves each coordinate by lr, so the moves show the rate."""
    table = torch.nn.Parameter(torch.zeros(4, 2))
    optimizer = RowSparseAdam([{"params": [table], "lr": 0.1, "row_decay": 0.5, "row_delay": 1.0}], row_sparse=[table])
    moves = []
    for _ in range(2):
        before = table.detach().clone()
        table.grad = torch.zeros(4, 2)
        table.grad[1] = 1.0          # the same gradient: Adam's step is lr in every coordinate
        optimizer.step()
        moves.append((before - table.detach())[1, 0].item())
    assert moves[0] == pytest.approx(0.1, rel=1e-4)
    assert moves[1] == pytest.approx(0.1 / math.sqrt(2), rel=1e-4)
    assert torch.equal(table.detach()[[0, 2, 3]], torch.zeros(3, 2))


def test_local_steps_to_a_tolerance_reach_the_closed_form_q_star():
    """Classical SVI's local steps, run to a tolerance on one batch holding every row, with the
    decoder frozen: each row's q_i reaches the optimal diagonal Gaussian of the linear model."""
    from pyrovae.guides import MeanFieldGuide
    from pyrovae.training.callbacks import LocalSteps
    from pyrovae.training.step import LossModule
    torch.manual_seed(0)
    base = linear_gaussian_vae()
    x = torch.randn(60, D)
    vae = VAE(base.model, MeanFieldGuide({"z": LATENT}, len(x), sparse=True))
    optimizer = make_optimizer(vae, lr=1e-3, local_lr=0.05)
    callback = LocalSteps(vae, LossModule(vae, make_objective("meanfield", 20), len(x)), steps=2000, num_data=len(x),
                          tol=1e-4)

    class Trainer:   # what LocalSteps reads
        beta = step_beta = 1.0

    Trainer.optimizer = optimizer
    pyro.set_rng_seed(0)
    callback.before_step(Trainer, torch.arange(len(x)), (x,))
    assert 20 < callback.taken < 2000   # stopped by the tolerance, not the cap
    mean, scale = optimal_diagonal_q(x)
    loc, fitted_scale = vae.guide.moments()["z"]
    # Adam's stationary jitter at this rate is ~0.02-0.05 per coordinate: unbiased, and small in nats
    assert (loc.detach() - mean).abs().max() < 0.1 and (loc.detach() - mean).mean(0).abs().max() < 0.02
    assert ((fitted_scale.detach() / scale) - 1).abs().max() < 0.15
    shortfall = exact_elbo(x, mean, scale) - exact_elbo(x, loc.detach(), fitted_scale.detach())
    assert shortfall.mean() < 0.02


def test_semi_amortized_refinement_improves_the_encoders_q_deterministically():
    from pyrovae.guides import SemiAmortizedGuide
    torch.manual_seed(0)
    base = linear_gaussian_vae()
    x = torch.randn(40, D)
    guide = SemiAmortizedGuide(base.model.latent_layers(), D, base.model, steps=30, lr=0.05)
    vae = VAE(base.model, guide)
    loc0, scale0 = guide.encode("z", x)
    loc_k, log_scale_k = guide.refine(x, {"z": loc0}, {"z": scale0.log()})
    before = exact_elbo(x, loc0.detach(), scale0.detach())
    after = exact_elbo(x, loc_k["z"], log_scale_k["z"].exp())
    assert (after > before).float().mean() > 0.95 and (after - before).mean() > 0.5
    again = guide.refine(x, {"z": loc0}, {"z": scale0.log()})   # fixed noise: a function of x
    assert torch.equal(again[0]["z"], loc_k["z"])
    assert torch.equal(guide.refine(x[:7], {"z": loc0[:7]}, {"z": scale0[:7].log()})[0]["z"], loc_k["z"][:7])
    assert not any(p.grad is not None for p in vae.parameters())   # refinement leaves no gradients behind


def test_semi_amortized_is_refused_where_it_cannot_serve():
    from pyrovae.core.errors import UsageError
    with pytest.raises(UsageError, match="latent layer conditioned on another"):
        build_vae(FitConfig(model="two-layer", guide="semi-amortized"), 20, 10)
    with pytest.raises(UsageError, match="cannot trace"):
        FitConfig(guide="semi-amortized", jit=True).validate()
    assert FitConfig(guide="semi-amortized").jit is False


def test_the_per_point_fit_reports_its_steps():
    """A batch of rows can take minutes (the test-time fit at the end of a mean-field fit): the
    progress moves with each step, batch after batch, and ends at its total."""
    torch.manual_seed(0)
    vae, x = linear_gaussian_vae(), torch.randn(30, D)
    calls = []
    fit_local(vae, x, "prior", max_steps=20, tol=None, batch_size=20, seed=0,
              progress=lambda done, total: calls.append((done, total)))
    done = [d for d, _ in calls]
    assert {total for _, total in calls} == {40}   # two batches of at most 20 steps
    assert done == sorted(done) and done[-1] == 40 and len(set(done)) == 40


def test_a_meanfield_fit_shows_the_test_time_fit(tmp_path, data):
    result = CliRunner().invoke(cli, [str(a) for a in ["fit", "--dataset", data, "--out", tmp_path / "run", "--guide",
                                                        "meanfield", "--epochs", 1, "--hidden", 8, "--latent-dim", 2,
                                                        "--batch-size", 50, "--device", "cpu"]])
    assert result.exit_code == 0, result.output
    assert "fit q per point" in result.stderr and "step" in result.stderr

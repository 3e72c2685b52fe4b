"""Training runs end to end on tiny data: pyrovae.train.fit, load_run, resume, binarization."""
import json
import math
from types import SimpleNamespace

import numpy as np
import pyro
import pytest
import torch

import pyrovae.workflows.fitting as train_module
from pyrovae import runs
from pyrovae.config import FitConfig
from pyrovae.core.errors import UsageError
from pyrovae.core.noise import BernoulliRedraws
from pyrovae.data import load_dataset
from pyrovae.training.callbacks import DynamicBinarization
from pyrovae.workflows import fit, load_run, prepare_data

TIMING = ("train_seconds", "eval_seconds")
# an untrained Bernoulli decoder has logits near 0: log p(x | z) ≈ -784 log 2 per MNIST digit; the
# ELBO of a freshly built VAE on these 784-pixel digits is -547..-552 nats (seeds 0-4), below this
UNTRAINED_ELBO = -784 * math.log(2)   # -543.4 nats



@pytest.fixture(scope="module")
def tiny_npz(tmp_path_factory):
    """500 training and 100 test rows of mnist-sample, as intensities in [0, 1]."""
    data = load_dataset("mnist-sample")
    path = tmp_path_factory.mktemp("data") / "tiny.npz"
    np.savez(path, train=data.train[:500].numpy(), test=data.test[:100].numpy())
    return str(path)


def config(dataset, **options):
    base = dict(dataset=dataset, latent_dim=4, hidden=(32,), batch_size=100, lr=1e-2, epochs=2,
                eval_train_points=200, device="cpu")
    base.update(options)
    return FitConfig(**base)


def metrics_of(run_dir):
    return runs.read_jsonl(run_dir / runs.METRICS)


def without_timing(records):
    return [{k: v for k, v in record.items() if k not in TIMING} for record in records]


def model_state(run_dir):
    return runs.load_checkpoint(run_dir)["model"]


def assert_same_state(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


class Spy:
    """Wraps the objective the trainer builds, recording every minibatch (x, index)."""

    def __init__(self, monkeypatch):
        self.batches, self.objectives = [], []
        real = train_module.make_objective

        def make(*args, **kwargs):
            objective = real(*args, **kwargs)
            self.objectives.append(objective)
            original = objective.differentiable_loss

            def differentiable_loss(model, guide, index, beta, x, *rest, **kw):
                self.batches.append((x.clone(), index.clone()))
                return original(model, guide, index, beta, x, *rest, **kw)

            objective.differentiable_loss = differentiable_loss
            return objective

        monkeypatch.setattr(train_module, "make_objective", make)

    def epochs(self, n, steps):
        """The training data each epoch saw, put back in row order: a list of [n, D] tensors."""
        out = []
        for e in range(len(self.batches) // steps):
            rows = None
            for x, index in self.batches[e * steps:(e + 1) * steps]:
                rows = torch.full((n, x.shape[1]), float("nan")) if rows is None else rows
                rows[index] = x
            assert not torch.isnan(rows).any()
            out.append(rows)
        return out


def test_training_improves_the_elbo(tiny_npz, tmp_path):
    result = fit(config(tiny_npz, epochs=3), tmp_path / "run", progress=False)
    records = metrics_of(tmp_path / "run")
    assert [m["epoch"] for m in records] == [1, 2, 3]
    test, train = [m["test_elbo"] for m in records], [m["train_elbo"] for m in records]
    # an untrained decoder is at about -784 log 2 = -543 nats; after training on 500 digits much higher
    assert test[-1] > test[0] + 10 and train[-1] > train[0] + 10, (test, train)
    assert records[-1]["train_objective"] > records[0]["train_objective"]
    assert result["test_elbo"] == test[-1] and result["train_elbo"] == train[-1] and result["epochs"] == 3
    for m in records:
        assert m["test_elbo"] == pytest.approx(m["test_reconstruction"] - m["test_kl"], rel=1e-6)
        assert m["test_kl"] > 0


def test_fit_writes_the_run_directory(tmp_path):
    cfg = config("mnist-sample", batch_size=500, hidden=(16,), latent_dim=2, epochs=2, seed=3)
    run_dir = tmp_path / "run"
    result = fit(cfg, run_dir, progress=False)
    for name in (runs.CONFIG, runs.CHECKPOINT, runs.METRICS, "samples.png", "reconstructions.png"):
        assert (run_dir / name).is_file(), name
    for png in ("samples.png", "reconstructions.png"):
        assert (run_dir / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads((run_dir / runs.CONFIG).read_text())
    assert saved["config"] == json.loads(json.dumps(cfg.to_dict()))
    assert set(saved["config"]) == {name for name, _ in cfg.options()}   # every option that applies
    assert saved["config"]["binarize"] == "dynamic"   # the resolved default is recorded
    assert {"pyrovae", "torch", "pyro", "numpy", "python"} <= set(saved["versions"])
    assert saved["versions"]["pyro"] == pyro.__version__ and saved["versions"]["torch"] == torch.__version__
    assert saved["device"] == "cpu" and saved["seed"] == 3
    assert saved["num_train"] == 5000 and saved["num_test"] == 1000 and saved["data_dim"] == 784
    lines = (run_dir / runs.METRICS).read_text().splitlines()
    assert len(lines) == 2
    for epoch, line in enumerate(lines, 1):
        record = json.loads(line)
        assert record["epoch"] == epoch
        assert record["train_elbo"] < 0 and record["test_elbo"] < 0
        assert math.isfinite(record["train_elbo"]) and math.isfinite(record["test_elbo"])
    state = runs.load_checkpoint(run_dir)
    assert state["epoch"] == 2 and state["step"] == 0
    assert result["run_dir"] == str(run_dir) and result["seed"] == 3 and result["device"] == "cpu"


def test_checkpoint_round_trip(tiny_npz, tmp_path, monkeypatch):
    built = []
    real = train_module.build_vae
    monkeypatch.setattr(train_module, "build_vae", lambda *a, **k: built.append(real(*a, **k)) or built[-1])
    fit(config(tiny_npz, epochs=1), tmp_path / "run", progress=False)
    trained = built[0]
    run = load_run(tmp_path / "run", device="cpu")
    assert run.epoch == 1 and run.config.dataset == tiny_npz
    assert run.vae is not trained
    x = run.data.test[0][:10]
    z = torch.randn(10, 4, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(run.vae.model.decoder(z), trained.model.decoder(z))
        for a, b in zip(run.vae.guide.encode("z", x), trained.guide.encode("z", x)):
            assert torch.equal(a, b)
    # the test set is re-binarized exactly as in training
    assert torch.equal(run.data.test[0], prepare_data(run.config, torch.device("cpu")).test[0])
    # and a perturbed model would be caught by the comparison above
    with torch.no_grad():
        next(trained.model.decoder.parameters())[0, 0] += 1e-3
        assert not torch.equal(run.vae.model.decoder(z), trained.model.decoder(z))


def test_same_seed_same_run_other_seed_different(tiny_npz, tmp_path):
    dirs = {}
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        dirs[name] = tmp_path / name
        fit(config(tiny_npz, seed=seed), dirs[name], progress=False)
    ma, mb, mc = (without_timing(metrics_of(dirs[k])) for k in "abc")
    assert ma == mb
    assert_same_state(model_state(dirs["a"]), model_state(dirs["b"]))
    assert ma != mc
    sa, sc = model_state(dirs["a"]), model_state(dirs["c"])
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_kl_warmup_ramps_beta(tiny_npz, tmp_path):
    fit(config(tiny_npz, epochs=4, kl_warmup=3), tmp_path / "a", progress=False)
    assert [m["beta"] for m in metrics_of(tmp_path / "a")] == pytest.approx([1 / 3, 2 / 3, 1.0, 1.0])
    fit(config(tiny_npz, epochs=3, kl_warmup=2, beta=2.0), tmp_path / "b", progress=False)
    assert [m["beta"] for m in metrics_of(tmp_path / "b")] == pytest.approx([1.0, 2.0, 2.0])
    fit(config(tiny_npz, epochs=2), tmp_path / "c", progress=False)
    assert [m["beta"] for m in metrics_of(tmp_path / "c")] == [1.0, 1.0]


@pytest.mark.parametrize("mode", ["static", "dynamic"])
def test_binarization(tiny_npz, tmp_path, monkeypatch, mode):
    spy = Spy(monkeypatch)
    cfg = config(tiny_npz, epochs=2, binarize=mode, seed=7)
    fit(cfg, tmp_path / "run", progress=False)
    first, second = spy.epochs(500, steps=5)
    intensities = load_dataset(tiny_npz).train
    for epoch_data in (first, second):
        assert set(epoch_data.unique().tolist()) == {0.0, 1.0}
        # x ~ Bernoulli(intensity): zero-intensity pixels stay 0, one-intensity pixels stay 1
        assert torch.all(epoch_data[intensities == 0] == 0) and torch.all(epoch_data[intensities == 1] == 1)
    prepared = prepare_data(cfg, torch.device("cpu"))
    if mode == "static":
        assert torch.equal(first, second)
        assert torch.equal(first, prepared.train[0])   # fixed by the seed
        other = prepare_data(cfg.replace(seed=8), torch.device("cpu"))
        assert not torch.equal(other.train[0], prepared.train[0])
    else:
        assert not torch.equal(first, second)
        assert torch.equal(prepared.train[0], intensities)   # kept as intensities, drawn each epoch
        # mean of the draws tracks the intensities: per-pixel SE is sqrt(p(1-p)/2) at most 0.36
        diff = ((first + second) / 2 - intensities).mean().abs()
        assert diff < 4 * 0.5 / math.sqrt(2 * first.numel())


def test_dynamic_binarization_of_old_runs_draws_what_torch_bernoulli_draws():
    """skip_certain=False (runs trained before the certain pixels were skipped): u < p from the
    trainer's generator for every pixel, the draws of torch.bernoulli on CPU, so those runs resume
    bit-identically; every epoch into the one buffer the first allocated. If torch changes its
    Bernoulli sampler this fails; then only that resume promise for old runs is affected."""
    x = torch.rand(300, 50, generator=torch.Generator().manual_seed(0))
    trainer = SimpleNamespace(train=(x,), generator=torch.Generator().manual_seed(5))
    reference = torch.Generator().manual_seed(5)
    binarize = DynamicBinarization(skip_certain=False)
    buffers = []
    for _ in range(3):   # epochs
        binarize.on_epoch_start(trainer)
        assert torch.equal(trainer.epoch_data[0], torch.bernoulli(x, generator=reference))
        buffers.append(trainer.epoch_data[0].data_ptr())
    assert len(set(buffers)) == 1   # drawn into one buffer
    assert torch.equal(trainer.generator.get_state(), reference.get_state())   # as many draws as torch.bernoulli's


def test_dynamic_binarization_draws_only_the_uncertain_pixels():
    """Pixels of intensity 0 or 1 keep their value without a draw; the others are Bernoulli(p):
    their mean over 400 epochs within 5 SE of p (SE = sqrt(p(1-p)/400) <= 0.025), one uniform each
    per epoch, into one buffer; the same generator state, the same draws."""
    g = torch.Generator().manual_seed(0)
    x = torch.where(torch.rand(200, 30, generator=g) < 0.7, (torch.rand(200, 30, generator=g) > 0.5).float(),
                    torch.rand(200, 30, generator=g))
    uncertain = (x > 0) & (x < 1)
    assert 0.2 < uncertain.float().mean() < 0.4
    trainer = SimpleNamespace(train=(x,), generator=torch.Generator().manual_seed(5))
    binarize = DynamicBinarization()
    total, buffers = torch.zeros_like(x), set()
    epochs = 400
    for _ in range(epochs):
        before = trainer.generator.get_state()
        binarize.on_epoch_start(trainer)
        drawn = trainer.epoch_data[0]
        buffers.add(drawn.data_ptr())
        assert torch.equal(drawn[~uncertain], x[~uncertain])
        assert set(drawn.unique().tolist()) <= {0.0, 1.0}
        total += drawn
        again = BernoulliRedraws(x)(torch.Generator().set_state(before))
        assert torch.equal(again, drawn)
    assert binarize.draws.skips_certain and len(buffers) == 1
    p = x[uncertain]
    error = (total[uncertain] / epochs - p).abs() / (p * (1 - p) / epochs).sqrt().clamp(min=1e-3)
    assert error.max() < 5
    used = torch.Generator().manual_seed(5)
    torch.rand(epochs * int(uncertain.sum()), generator=used)
    assert torch.equal(trainer.generator.get_state(), used.get_state())   # one uniform per uncertain pixel


def test_dynamic_binarization_draws_every_pixel_of_mostly_uncertain_data():
    x = torch.rand(100, 20, generator=torch.Generator().manual_seed(1))   # every pixel uncertain
    redraws = BernoulliRedraws(x)
    assert not redraws.skips_certain
    assert torch.equal(redraws(torch.Generator().manual_seed(2)), torch.bernoulli(x, generator=torch.Generator().manual_seed(2)))


@pytest.mark.parametrize("old_run", [False, True])
def test_a_resumed_run_keeps_the_binarization_draws_it_began_with(tiny_npz, tmp_path, monkeypatch, old_run):
    """A new run skips the certain pixels and records so in config.json; a run from before, whose
    config.json records nothing, resumes drawing every pixel (torch.bernoulli's draws)."""
    run = tmp_path / "run"
    fit(config(tiny_npz, epochs=1, seed=3), run, progress=False)
    saved = json.loads((run / runs.CONFIG).read_text())
    assert saved["binarization_draws"] == "skip-certain"
    if old_run:
        del saved["binarization_draws"]
        (run / runs.CONFIG).write_text(json.dumps(saved))
    state = runs.load_checkpoint(run)
    spy = Spy(monkeypatch)
    fit(config(tiny_npz, epochs=2, seed=3), run, resume=True, progress=False)
    (second,) = spy.epochs(500, steps=5)
    intensities = load_dataset(tiny_npz).train
    generator = torch.Generator().set_state(state["rng"]["data"])
    expected = (torch.bernoulli(intensities, generator=generator) if old_run
                else BernoulliRedraws(intensities)(generator))
    assert torch.equal(second, expected)


def test_the_data_order_does_not_draw_the_initial_weights_uniforms():
    # the weights are drawn from torch's generator seeded by --seed; the data order and the
    # binarization from a stream of their own, so the first epoch's draws are not the weights'
    seed = 3
    weights = torch.Generator().manual_seed(seed)
    data = train_module.data_generator(seed, torch.device("cpu"))
    assert not torch.equal(torch.rand(1000, generator=weights), torch.rand(1000, generator=data))
    again = train_module.data_generator(seed, torch.device("cpu"))   # still the seed's: runs repeat
    assert torch.equal(torch.rand(5, generator=train_module.data_generator(seed, torch.device("cpu"))),
                       torch.rand(5, generator=again))


def test_test_set_is_binarized_once_by_the_seed(tiny_npz):
    cpu = torch.device("cpu")
    a = prepare_data(config(tiny_npz, seed=1, binarize="dynamic"), cpu).test[0]
    b = prepare_data(config(tiny_npz, seed=1, binarize="static"), cpu).test[0]
    c = prepare_data(config(tiny_npz, seed=2, binarize="dynamic"), cpu).test[0]
    assert set(a.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    raw = prepare_data(config(tiny_npz, binarize="none"), cpu).test[0]
    assert torch.equal(raw, load_dataset(tiny_npz).test)


def test_normal_likelihood_on_toy2d(tmp_path):
    cfg = config("toy2d", likelihood="normal", sigma="learned", latent_dim=2, hidden=(16,), batch_size=1000,
                 epochs=3, lr=2e-2)
    assert cfg.binarize == "none"
    fit(cfg, tmp_path / "run", progress=False)
    records = metrics_of(tmp_path / "run")
    assert len(records) == 3
    assert all(math.isfinite(m["test_elbo"]) for m in records)
    assert records[-1]["test_elbo"] > records[0]["test_elbo"]
    assert (tmp_path / "run" / "samples.png").is_file() and (tmp_path / "run" / "reconstructions.png").is_file()


def test_meanfield_guide_runs_one_epoch(tiny_npz, tmp_path):
    result = fit(config(tiny_npz, epochs=1, guide="meanfield", elbo="meanfield"), tmp_path / "run",
                 progress=False)
    (record,) = metrics_of(tmp_path / "run")
    assert math.isfinite(record["train_elbo"]) and record["train_elbo"] < 0
    # no parameters for test points: no test ELBO per epoch, but one from a test-time fit at the end, kept
    # in the last epoch's record (tests/workflows/test_model_selection.py checks its terms)
    assert result["test_elbo"] < 0 and result["test_elbo_points"] == 100 and result["test_elbo_fit_steps"] >= 1
    assert {key: record[key] for key in ("test_elbo", "test_elbo_points", "test_elbo_fit_steps")} == \
        {key: result[key] for key in ("test_elbo", "test_elbo_points", "test_elbo_fit_steps")}
    # learning happened: one epoch (5 steps, each after 4 local steps) lifts the train ELBO to
    # -389..-412 nats over seeds 0-4 (-411.6 for seed 0), the test-time-fit ELBO to -301..-316;
    # at least 100 nats above an untrained decoder leaves >= 30 nats to spare
    assert record["train_elbo"] > UNTRAINED_ELBO + 100, record["train_elbo"]
    assert result["test_elbo"] > UNTRAINED_ELBO + 100, result["test_elbo"]
    run = load_run(tmp_path / "run", device="cpu")
    assert run.vae.guide.loc["z"].shape == (500, 4)


def test_iwae_objective_runs_one_epoch(tiny_npz, tmp_path, monkeypatch):
    spy = Spy(monkeypatch)
    fit(config(tiny_npz, epochs=1, elbo="iwae", particles=3), tmp_path / "run", progress=False)
    (record,) = metrics_of(tmp_path / "run")
    assert math.isfinite(record["test_elbo"]) and record["test_elbo"] < 0
    assert type(spy.objectives[0]).__name__ == "IWAE_ELBO" and spy.objectives[0].num_particles == 3
    # learning happened: after one epoch (5 steps) the train ELBO is -349..-408 nats over seeds 0-4
    # (-407.9 for seed 0): 100 nats above an untrained decoder leaves >= 35 nats to spare
    assert record["train_elbo"] > UNTRAINED_ELBO + 100, record["train_elbo"]
    # and the objective is not the plain ELBO: the same seed with --elbo trace trains another model
    # (train ELBO -413.8 for seed 0, vs -407.9)
    fit(config(tiny_npz, epochs=1), tmp_path / "trace", progress=False)
    (trace_record,) = metrics_of(tmp_path / "trace")
    assert trace_record["train_elbo"] != record["train_elbo"]
    assert without_timing([trace_record]) != without_timing([record])


def test_resume_is_bit_identical(tiny_npz, tmp_path):
    fit(config(tiny_npz, epochs=3, seed=4), tmp_path / "whole", progress=False)
    fit(config(tiny_npz, epochs=2, seed=4), tmp_path / "split", progress=False)
    # on resume only epochs, minutes, device and data_dir may change: other differences are refused
    with pytest.raises(UsageError, match=r"lr=1\.0 \(the run has 0\.01\); seed=999 \(the run has 4\)"):
        fit(config(tiny_npz, epochs=3, seed=999, lr=1.0), tmp_path / "split", resume=True, progress=False)
    fit(config(tiny_npz, epochs=3, seed=4), tmp_path / "split", resume=True, progress=False)
    assert without_timing(metrics_of(tmp_path / "split")) == without_timing(metrics_of(tmp_path / "whole"))
    whole, split = (runs.load_checkpoint(tmp_path / d) for d in ("whole", "split"))
    assert_same_state(whole["model"], split["model"])
    for a, b in zip(whole["optimizer"]["state"].values(), split["optimizer"]["state"].values()):
        for key in a:
            assert torch.equal(torch.as_tensor(a[key]), torch.as_tensor(b[key])), key
    assert whole["epoch"] == split["epoch"] == 3


def test_jit_training_compiles_once(tiny_npz, tmp_path, monkeypatch):
    """Pyro's JIT cache is keyed on id(model): the trainer must pass the same bound method every
    step (``vae.model`` is a new object on each access), or it re-traces every step."""
    spy = Spy(monkeypatch)
    fit(config(tiny_npz, epochs=1, jit=True), tmp_path / "run", progress=False)
    (record,) = metrics_of(tmp_path / "run")
    assert math.isfinite(record["test_elbo"])
    # the traced graph computes the same numbers as the eager one, up to float32 rounding: the JIT
    # may reorder or fuse ops (relative differences ~1e-7 after 5 Adam steps); another seed moves
    # the ELBOs by tens of nats, far outside rel=1e-5
    fit(config(tiny_npz, epochs=1, jit=False), tmp_path / "eager", progress=False)
    (eager,) = without_timing(metrics_of(tmp_path / "eager"))
    (traced,) = without_timing([record])
    assert traced.keys() == eager.keys()
    assert traced == pytest.approx(eager, rel=1e-5)
    objective = spy.objectives[0]
    inner = objective.compiled.values() if isinstance(getattr(objective, "compiled", None), dict) else [objective]
    compilations = sum(len(elbo._loss_and_surrogate_loss.compiled) for elbo in inner)
    assert compilations == 1, f"{compilations} compilations for 5 steps of one batch shape"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_amortized_guides_step_with_fused_adam(dtype):
    """torch's fused Adam kernel (one pass per parameter) where it runs, the CPU included: the
    update of torch's default Adam up to rounding. 20 steps on the same gradients move each
    weight by up to 0.02 (lr 1e-3 a step); the two agree to 1e-6, far below one step's move, so
    another lr, betas or eps, or a skipped bias correction, fails."""
    from pyrovae.config import build_vae
    from pyrovae.training.optim import make_optimizer

    torch.manual_seed(0)
    vae = build_vae(FitConfig(latent_dim=4, hidden=(16,)).validate(), 12, 50).to(dtype)
    fused = make_optimizer(vae, lr=1e-3)
    assert isinstance(fused, torch.optim.Adam) and fused.defaults["fused"]
    params = list(vae.parameters())
    initial = [p.detach().clone() for p in params]
    copies = [p.detach().clone().requires_grad_() for p in params]
    reference = torch.optim.Adam(copies, lr=1e-3)
    generator = torch.Generator().manual_seed(1)
    for _ in range(20):
        for p, q in zip(params, copies):
            p.grad = torch.randn(p.shape, generator=generator, dtype=dtype)
            q.grad = p.grad.clone()
        fused.step()
        reference.step()
    assert max((p.detach() - p0).abs().max().item() for p, p0 in zip(params, initial)) > 1e-3   # it moved
    assert max((p.detach() - q.detach()).abs().max().item() for p, q in zip(params, copies)) < 1e-6


def test_jit_runs_the_partial_last_batch_eagerly(tiny_npz, tmp_path, monkeypatch):
    """500 rows in batches of 128: three compiled steps and a last one of 116 rows an epoch,
    which runs the eager objective instead of a second compilation; the run's numbers are the
    eager run's up to float32 rounding (rel=1e-5, as in test_jit_training_compiles_once)."""
    spy = Spy(monkeypatch)
    fit(config(tiny_npz, epochs=2, jit=True, batch_size=128), tmp_path / "run", progress=False)
    objective = spy.objectives[0]
    assert [key[-1][0] for key in objective.compiled] == [128]   # one shape compiled: the full batch
    fit(config(tiny_npz, epochs=2, jit=False, batch_size=128), tmp_path / "eager", progress=False)
    traced, eager = (without_timing(metrics_of(tmp_path / d)) for d in ("run", "eager"))
    assert len(traced) == len(eager) == 2
    for a, b in zip(traced, eager):
        assert a == pytest.approx(b, rel=1e-5)

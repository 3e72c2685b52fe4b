"""The CUDA path: the same commands on a GPU. Skipped on machines without CUDA."""
import json

import pytest
import torch
from click.testing import CliRunner

from pyrovae.cli.main import cli

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def test_fit_and_evaluate_on_cuda(tmp_path):
    runner = CliRunner()
    run_dir = tmp_path / "run"
    result = runner.invoke(cli, ["fit", "--device", "cuda", "--epochs", "1", "--hidden", "32", "--latent-dim", "4",
                                 "--out", str(run_dir), "--quiet"])
    assert result.exit_code == 0, result.output
    fitted = json.loads(result.stdout.strip().splitlines()[-1])
    assert fitted["device"].startswith("cuda") and fitted["test_elbo"] < 0
    result = runner.invoke(cli, ["evaluate", str(run_dir), "--device", "cuda", "--k", "50", "--limit", "20"])
    assert result.exit_code == 0, result.output
    evaluated = json.loads(result.stdout.strip().splitlines()[-1])
    # the ELBO is a lower bound of the IWAE bound at K=50, up to a few standard errors
    assert evaluated["iwae_bounds"][0]["bound"] <= evaluated["log_likelihood"] + 3 * evaluated["log_likelihood_se"]


def test_resume_on_cuda(tmp_path):
    runner = CliRunner()
    args = ["fit", "--device", "cuda", "--hidden", "32", "--latent-dim", "4", "--out", str(tmp_path / "run"), "--quiet"]
    assert runner.invoke(cli, [*args, "--epochs", "1"]).exit_code == 0
    result = runner.invoke(cli, [*args, "--epochs", "2", "--resume"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout.strip().splitlines()[-1])["epochs"] == 2

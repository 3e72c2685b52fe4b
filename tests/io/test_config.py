"""A run's options, composed of the parts that own them (issue 21): each default, help text and
check is stated once, in an options dataclass; the CLI's flags are built from them; configs of
runs written before the composition (pyrovae 0.2, tests/data/run-0.2) still load and resume."""
from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from pyrovae import runs
from pyrovae.cli.fit import fit as fit_command
from pyrovae.cli.main import cli
from pyrovae.config import FitConfig, guide_options, model_options, option_classes
from pyrovae.core.errors import UsageError
from pyrovae.core.options import fields
from pyrovae.guides import GUIDES
from pyrovae.models import MODELS
from pyrovae.workflows import fit, load_run

OLD_RUN = Path(__file__).parents[1] / "data" / "run-0.2"   # written by pyrovae 0.2 before the redesign


def test_every_fit_flag_takes_its_default_and_help_from_the_dataclass_that_owns_it():
    flags = {param.name: param for param in fit_command.params if isinstance(param, click.Option)}
    for cls in option_classes():
        for f in fields(cls):
            if not f.metadata["cli"]:
                continue
            param = flags[f.name]
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
            assert param.default == shown, (cls.__name__, f.name)
            assert f.metadata["help"] in param.help, (cls.__name__, f.name)


def test_a_default_lives_in_one_place_even_when_families_share_an_option():
    seen: dict[str, object] = {}
    for cls in option_classes():
        for f in fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            assert seen.setdefault(f.name, default) == default, f"{f.name} has two defaults"


def test_options_live_in_their_families_parts():
    config = FitConfig(model="two-layer", guide="flow", z1_dim=7, flows=3, epochs=4, kl_warmup=2)
    assert config.model_options.z1_dim == 7 and config.guide_options.flows == 3
    assert config.training.epochs == 4 and config.objective.kl_warmup == 2
    assert config.z1_dim == 7 and config.flows == 3   # read by name
    assert FitConfig.from_dict(config.to_dict()) == config
    assert "refine_steps" not in config.to_dict()   # another family's option is not recorded
    plain = FitConfig(z1_dim=7)   # ignored in Python: one config may serve several families ...
    with pytest.raises(UsageError, match="z1_dim is an option of model='two-layer'"):
        plain.refuse_unused()     # ... and refused where it is a mistake (the CLI)
    with pytest.raises(AttributeError):
        plain.z1_dim


def test_the_cli_refuses_an_option_of_a_family_it_does_not_use(tmp_path):
    result = CliRunner().invoke(cli, ["fit", "--flows", "3", "--out", str(tmp_path / "run")])
    assert result.exit_code == 2 and "--flows is an option of --guide flow" in result.stderr
    assert not (tmp_path / "run").exists()


def test_every_family_has_an_options_dataclass_the_config_composes():
    for name in MODELS:
        assert dataclasses.is_dataclass(model_options(name))
    for name in GUIDES:
        assert dataclasses.is_dataclass(guide_options(name))


def test_a_run_written_by_pyrovae_0_2_loads_evaluates_and_resumes(tmp_path):
    run_dir = tmp_path / "old"
    shutil.copytree(OLD_RUN, run_dir)
    recorded = json.loads((run_dir / runs.CONFIG).read_text())["config"]
    assert "z1_dim" in recorded and recorded["guide"] == "flow"   # the old flat record, every family's options
    config = FitConfig.from_run(run_dir)
    assert (config.model, config.guide, config.flows, config.hidden, config.latent_dim, config.kl_warmup) == \
        ("vae", "flow", 1, (8,), 2, 2)
    assert "z1_dim" not in config.to_dict()
    run = load_run(run_dir, device="cpu")   # the checkpoint loads strictly into the families it names
    assert run.epoch == 1
    from pyrovae import estimate_log_likelihood
    summary = estimate_log_likelihood(run.vae, run.data.test[0][:10], k=20).summary()
    assert -800 < summary["log_likelihood"] < 0 and summary["n"] == 10
    resumed = fit(FitConfig(epochs=2), run_dir, resume=True, progress=False)
    assert resumed["epochs"] == 2

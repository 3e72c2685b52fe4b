"""Shared set-up: tiny tensors on one thread, and a clean Pyro state for every test."""
import pyro
import pytest
import torch

# The tests use tiny tensors: more threads only contend (2 cores here, often shared).
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def clean_pyro():
    """pyro.module names are global and Pyro draws from torch's global generator."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    yield
    pyro.clear_param_store()

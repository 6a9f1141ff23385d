"""Checkpoints in one process: a round trip of an AutoRealNVP, its units and the optimizer."""

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_realnvp import AutoRealNVP, fit
from pyro_realnvp.distributed import load_checkpoint, save_checkpoint


def model():
    pyro.sample("x", dist.Normal(3.0, 0.01))  # narrow: the location is in the start's units
    pyro.sample("s", dist.LogNormal(0.0, 1.0))


def test_a_checkpoint_restores_the_guides_values_and_units(tmp_path):
    guide = AutoRealNVP(model, num_layers=2, hidden_dims=(8,))
    optim = pyro.optim.Adam({"lr": 0.01})
    fit(model, guide, num_steps=5, optim=optim, progress=False)
    save_checkpoint(tmp_path / "ckpt.pt", optim)
    saved = {k: v.detach().clone() for k, v in pyro.get_param_store().named_parameters()}
    median = guide.median()
    fit(model, guide, num_steps=5, optim=optim, progress=False)  # moves on
    load_checkpoint(tmp_path / "ckpt.pt", optim)
    for name, value in pyro.get_param_store().named_parameters():
        assert torch.equal(value.detach(), saved[name]), name
    assert all(torch.equal(guide.median()[k], v) for k, v in median.items())
    assert (tmp_path / "ckpt.pt.optim").exists()


def test_a_checkpoint_of_another_shape_is_refused_naming_the_parameter(tmp_path):
    pyro.param("w", torch.zeros(3))
    save_checkpoint(tmp_path / "ckpt.pt")
    pyro.clear_param_store()
    pyro.param("w", torch.zeros(2))
    with pytest.raises(ValueError, match="'w' has shape \\(3,\\), the guide's has \\(2,\\)"):
        load_checkpoint(tmp_path / "ckpt.pt")

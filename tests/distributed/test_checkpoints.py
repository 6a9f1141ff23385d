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


def test_a_file_pyros_param_store_saved_loads(tmp_path):
    pyro.param("s", torch.ones(2), constraint=torch.distributions.constraints.positive)
    pyro.get_param_store().save(str(tmp_path / "store.pt"))
    pyro.clear_param_store()
    load_checkpoint(tmp_path / "store.pt")
    assert torch.allclose(pyro.param("s").detach(), torch.ones(2))


def test_a_failed_save_keeps_the_previous_checkpoint_and_leaves_nothing_behind(
    tmp_path, monkeypatch
):
    pyro.param("a", torch.ones(2))
    optim = pyro.optim.Adam({"lr": 0.1})
    save_checkpoint(tmp_path / "ckpt.pt", optim)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    real, calls = torch.save, []

    def failing_second_write(obj, f, *args, **kwargs):
        calls.append(None)
        if len(calls) == 2:  # the optimizer's state, after the parameters'
            raise OSError("disk full")
        return real(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", failing_second_write)
    with torch.no_grad():
        pyro.param("a").fill_(5.0)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tmp_path / "ckpt.pt", optim)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_a_corrupt_optimizer_state_is_refused_before_any_parameter_is_loaded(tmp_path):
    pyro.param("a", torch.ones(2))
    save_checkpoint(tmp_path / "ckpt.pt", pyro.optim.Adam({"lr": 0.1}))
    (tmp_path / "ckpt.pt.optim").write_bytes(b"junk")
    with torch.no_grad():
        pyro.param("a").fill_(5.0)
    with pytest.raises(ValueError, match=r"ckpt\.pt\.optim"):
        load_checkpoint(tmp_path / "ckpt.pt", pyro.optim.Adam({"lr": 0.1}))
    assert torch.equal(pyro.param("a").detach(), torch.full((2,), 5.0))

"""The guide's side of the param store: round trips, and a stale entry refused."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from helpers import hierarchical

from pyro_realnvp import AutoRealNVP, fit

SMALL = {"num_layers": 4, "hidden_dims": (32, 32)}


def trained_guide():
    model = hierarchical(torch.randn(4, 3))
    guide = AutoRealNVP(model, **SMALL)
    fit(model, guide, num_steps=100, lr=0.02, progress=False)
    return model, guide


def test_state_dict_round_trip_restores_an_identical_posterior(tmp_path):
    model, guide = trained_guide()
    expected = guide.quantiles([0.1, 0.5, 0.9])
    torch.save(guide.state_dict(), tmp_path / "guide.pt")
    pyro.clear_param_store()
    restored = AutoRealNVP(model, **SMALL)
    restored()  # set up the prototype, then overwrite every parameter
    restored.load_state_dict(torch.load(tmp_path / "guide.pt"))
    for name, value in restored.quantiles([0.1, 0.5, 0.9]).items():
        assert torch.equal(value, expected[name]), name


def test_param_store_round_trip_restores_an_identical_posterior(tmp_path):
    model, guide = trained_guide()
    expected = guide.quantiles([0.1, 0.5, 0.9])
    pyro.get_param_store().save(tmp_path / "params.pt")
    pyro.clear_param_store()
    pyro.get_param_store().load(tmp_path / "params.pt")
    restored = AutoRealNVP(model, **SMALL)
    restored()
    for name, value in restored.quantiles([0.1, 0.5, 0.9]).items():
        assert torch.equal(value, expected[name]), name
    # Training continues on the loaded parameters, not on fresh copies.
    before = [p.detach().clone() for p in restored.flow.parameters()]
    fit(model, restored, num_steps=3, progress=False)
    after = restored.flow.parameters()
    assert any(not torch.equal(a, b) for a, b in zip(before, after, strict=True))


def test_stale_param_store_of_another_shape_is_reported():
    trained_guide()
    with pytest.raises(ValueError, match="clear_param_store"):
        AutoRealNVP(lambda: pyro.sample("x", dist.Normal(0.0, 1.0)), **SMALL)()


def test_forget_deletes_only_the_names_under_its_prefix():
    from pyro_realnvp.guide.store import forget

    for name in ("AutoRealNVP.loc", "AutoRealNVP.flow$$$w", "AutoRealNVPx.loc", "other"):
        pyro.param(name, torch.zeros(1))
    forget("AutoRealNVP.")
    assert sorted(pyro.get_param_store().keys()) == ["AutoRealNVPx.loc", "other"]

"""Latents the model reads as Python numbers, named once at set-up."""

import math
import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.nn import PyroModule, PyroParam

from pyro_realnvp import AutoRealNVP
from pyro_realnvp.guide.host_reads import host_read_sites

Y = torch.tensor([0.3, -0.5, 1.2])


def reads(how):
    def model():
        s = pyro.sample("s", dist.LogNormal(0.0, 1.0))
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        with pyro.plate("rows", 3):
            pyro.sample("y", dist.Normal(how(mu), s), obs=Y)

    return model


@pytest.mark.parametrize(
    "how",
    [lambda mu: mu.item(), lambda mu: math.tanh(float(mu)), lambda mu: mu.tolist() * 2,
     lambda mu: int(mu * 0) + 1.0],
    ids=["item", "float", "tolist", "int-of-derived"],
)  # fmt: skip
def test_a_latent_read_as_a_number_is_named(how):
    model = reads(how)
    assert host_read_sites(model, poutine.trace(model).get_trace(), (), {}) == ["mu"]


def test_reading_the_data_or_tensors_is_fine():
    def model(data):
        mu = pyro.sample("mu", dist.Normal(float(data.mean()), data.std().item()))
        with pyro.plate("rows", len(data)):
            pyro.sample("y", dist.Normal(torch.tanh(mu), 1.0), obs=data)

    assert host_read_sites(model, poutine.trace(model).get_trace(Y), (Y,), {}) == []


def test_a_module_parameter_read_as_a_number_is_not_a_latent():
    class Model(PyroModule):
        def __init__(self):
            super().__init__()
            self.scale = PyroParam(torch.tensor(1.0))

        def forward(self):
            mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
            pyro.sample("y", dist.Normal(mu, self.scale.item()), obs=torch.tensor(0.3))

    model = Model()
    assert host_read_sites(model, poutine.trace(model).get_trace(), (), {}) == []


def test_the_guide_warns_once_at_set_up_naming_the_site():
    model = reads(lambda mu: mu.item())
    guide = AutoRealNVP(model, num_layers=2, hidden_dims=(8,))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        guide()
        guide()
    ours = [w for w in caught if "Python numbers" in str(w.message)]
    assert len(ours) == 1
    assert "['mu']" in str(ours[0].message)
    assert "cut gradient" in str(ours[0].message)
    assert ours[0].filename == __file__  # the user's line, not the package's

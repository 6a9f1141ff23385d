"""Set-up failures at an autoguide's initial values, named by site."""

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_realnvp import AutoRealNVP

SMALL = {"num_layers": 2, "hidden_dims": (8,)}


def test_discrete_latent_is_rejected_with_the_site_name():
    def model():
        pyro.sample("count", dist.Poisson(3.0))

    with pytest.raises(ValueError, match="discrete sample site 'count'"):
        AutoRealNVP(model)()


def test_model_without_latents_is_rejected():
    def model():
        pyro.sample("y", dist.Normal(0.0, 1.0), obs=torch.tensor(0.5))

    with pytest.raises(RuntimeError, match="no latent variables"):
        AutoRealNVP(model)()


def test_mixed_dtypes_are_rejected_naming_the_sites():
    def model():
        pyro.sample("a", dist.Normal(0.0, 1.0))
        pyro.sample("b", dist.Normal(torch.tensor(0.0, dtype=torch.float64), 1.0))

    with pytest.raises(
        ValueError, match="'a' on cpu as torch.float32.*'b' on cpu as torch.float64"
    ):
        AutoRealNVP(model)()


def test_an_unsupported_support_is_named_with_its_site():
    def model():
        pyro.sample("x", dist.Normal(0.0, 1.0))
        pyro.sample("w", dist.Wishart(df=torch.tensor(3.0), covariance_matrix=torch.eye(2)))

    with pytest.raises(ValueError, match="site 'w' has support"):
        AutoRealNVP(model)()


def test_a_local_latent_in_a_subsampling_plate_is_refused_at_set_up():
    data = torch.randn(100)

    def model():
        v = pyro.sample("v", dist.Normal(0.0, 3.0))
        with pyro.plate("data", len(data), subsample_size=10) as index:
            z = pyro.sample("z", dist.Normal(v, 1.0))
            pyro.sample("y", dist.Normal(z, 1.0), obs=data[index])

    guide = AutoRealNVP(model, **SMALL)
    with pytest.raises(ValueError, match="site 'z' is in subsampling plate 'data'") as error:
        guide()
    assert "AutoNormal(poutine.block(model, expose=['z']))" in str(error.value)
    assert guide.prototype_trace is None  # refused, not half built

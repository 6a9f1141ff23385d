"""The model's potential at a packed unconstrained latent."""

import math

import pyro
import pyro.distributions as dist
import torch
from pyro.infer.autoguide import AutoDiagonalNormal

from pyro_realnvp.guide.potential import Potential

DATA = torch.linspace(-1.0, 2.0, 30)


def model(data=DATA, subsample_size=None):
    mu = pyro.sample("mu", dist.Normal(0.0, 2.0))
    s = pyro.sample("s", dist.LogNormal(0.0, 1.0))
    with pyro.plate("data", len(data), subsample_size=subsample_size) as index:
        pyro.sample("y", dist.Normal(mu, s), obs=data[index])


def by_hand(u: torch.Tensor) -> torch.Tensor:
    """-log p(y, mu, s) - log|ds/du|, written out."""
    mu, log_s = u[..., 0], u[..., 1]
    s = log_s.exp()
    log_joint = dist.Normal(0.0, 2.0).log_prob(mu) + dist.LogNormal(0.0, 1.0).log_prob(s)
    log_joint = log_joint + dist.Normal(mu[..., None], s[..., None]).log_prob(DATA).sum(-1)
    return -(log_joint + log_s)


def set_up(**kwargs):
    guide = AutoDiagonalNormal(model)
    guide(**kwargs)
    return guide


def test_potential_is_the_negative_log_joint_with_the_log_det():
    potential = Potential(model, set_up())
    u = torch.tensor([0.3, -0.4])
    assert torch.allclose(potential(u), by_hand(u))


def test_batched_log_joint_matches_one_latent_at_a_time():
    potential = Potential(model, set_up())
    assert potential.set_max_plate_nesting() == 1
    u = torch.randn(5, 2)
    batched = potential.log_joint(u.reshape(potential.latent_shape(5)))
    assert batched.shape == (5,)
    assert torch.allclose(batched, torch.stack([-potential(row) for row in u]))


def test_full_data_reads_every_row_of_a_subsampling_plate():
    kwargs = {"subsample_size": 4}
    guide = set_up(**kwargs)
    u = torch.tensor([0.5, 0.1])
    full = Potential(model, guide, kwargs=kwargs, full_data=True)
    assert torch.allclose(full(u), by_hand(u))
    minibatch = Potential(model, guide, kwargs=kwargs)
    values = {minibatch(u).item() for _ in range(5)}
    assert len(values) > 1  # a random minibatch each call, scaled up
    assert all(math.isfinite(v) for v in values)

"""Models and guides the diagnostics' tests share."""

import pyro
import pyro.distributions as dist
import torch
from pyro.infer.autoguide import AutoDiagonalNormal, AutoNormal, init_to_value

SIGMA = torch.tensor([15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0])


Y = torch.tensor([28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0])


ROWS = 1.0 + torch.randn(100, generator=torch.Generator().manual_seed(0))


# The exact posterior of ``mu`` given all 100 rows; guides start a little wider than it.
POST_SD = 101**-0.5


POST_MEAN = ROWS.sum() / 101


def funnel():
    v = pyro.sample("v", dist.Normal(0.0, 3.0))
    scale = torch.exp(v / 2).unsqueeze(-1).expand(v.shape + (9,))
    pyro.sample("x", dist.Normal(0.0, scale).to_event(1))


def correlated_gaussian():
    cov = torch.tensor([[1.0, 0.8, 0.0], [0.8, 1.0, 0.3], [0.0, 0.3, 1.0]])
    pyro.sample("z", dist.MultivariateNormal(torch.tensor([1.0, -2.0, 0.5]), cov))


def schools(sigma, y=None):
    mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = pyro.sample("tau", dist.HalfCauchy(5.0))
    weights = pyro.sample("weights", dist.Dirichlet(torch.ones(3)))
    with pyro.plate("school", len(sigma)):
        theta = pyro.sample("theta", dist.Normal(mu, tau))
        pyro.deterministic("shift", theta - mu)
        pyro.sample("obs", dist.Normal(theta + weights[..., 0], sigma), obs=y)


def schools_guide():
    """An unfitted guide whose school effects are far apart, so a mix-up shows."""
    init = init_to_value(values={"theta": torch.arange(8.0) * 10, "mu": torch.tensor(1.0)})
    return AutoNormal(schools, init_loc_fn=init, init_scale=0.01)


def subsampled_observations(rows=ROWS):
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    with pyro.plate("data", len(rows), subsample_size=10) as index:
        pyro.sample("y", dist.Normal(mu, 1.0), obs=rows[index])


def subsampled_local_latents(rows=ROWS):
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    with pyro.plate("data", len(rows), subsample_size=10) as index:
        z = pyro.sample("z", dist.Normal(mu, 1.0))
        pyro.sample("y", dist.Normal(z, 1.0), obs=rows[index])


def near_posterior(guide_class):
    pyro.clear_param_store()
    init = init_to_value(values={"mu": POST_MEAN})
    return guide_class(subsampled_observations, init_loc_fn=init, init_scale=1.2 * POST_SD)


GLOBAL_GUIDES = {"AutoNormal": AutoNormal, "AutoDiagonalNormal": AutoDiagonalNormal}


def conjugate(y):
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    pyro.sample("y", dist.Normal(mu, 1.0), obs=y)


def cauchy():
    pyro.sample("x", dist.Cauchy(0.0, 1.0))

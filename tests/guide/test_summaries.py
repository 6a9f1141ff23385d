"""Summaries: quantiles and medians per site, exact while the flow is the identity."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch.distributions import biject_to, constraints

from pyro_realnvp import AutoRealNVP


@pytest.mark.parametrize(
    ("levels", "error", "message"),
    [("0.5", TypeError, "^quantiles must be numbers"), ([], ValueError, "at least one level")],
)
def test_quantile_levels_that_are_not_levels_are_refused(levels, error, message):
    guide = AutoRealNVP(lambda: pyro.sample("x", dist.Normal(0.0, 1.0)))
    with pytest.raises(error, match=message):
        guide.quantiles(levels)


def test_a_decreasing_support_map_takes_the_complementary_quantile():
    from pyro_realnvp.guide.summaries import site_quantiles

    site = {"name": "z", "fn": dist.Normal(0.0, 1.0)}  # real support: the identity
    below = {"name": "w", "fn": dist.ImproperUniform(constraints.less_than(1.0), (), ())}
    levels = torch.tensor([0.1, 0.9])
    u = torch.tensor([[-1.0, -1.0], [1.0, 1.0], [1.0, 1.0], [-1.0, -1.0]])  # q, then 1 - q
    values = site_quantiles([(site, torch.Size()), (below, torch.Size())], levels, u, dict)
    assert values["z"].tolist() == [-1.0, 1.0]
    to_below = biject_to(constraints.less_than(1.0))
    assert values["w"].tolist() == to_below(torch.tensor([1.0, -1.0])).tolist()
    assert values["w"][0] < values["w"][1]  # quantiles increase with the level


def test_gaussian_quantiles_are_exact_and_other_supports_come_from_the_draws():
    from pyro_realnvp.guide.summaries import PackedPosterior, marginal_quantiles

    sites = [
        ({"name": "s", "fn": dist.LogNormal(0.0, 1.0)}, torch.Size([])),
        ({"name": "p", "fn": dist.Dirichlet(torch.ones(3))}, torch.Size([2])),
    ]
    draws = torch.randn(4000, 3, generator=torch.Generator().manual_seed(0))
    packed = PackedPosterior(sites, torch.zeros(3), torch.ones(3), True, lambda: draws)
    values = marginal_quantiles(packed, torch.tensor([0.5, 0.975]))
    assert torch.allclose(values["s"], torch.tensor([1.0, 7.0990]), atol=1e-3)  # e^{1.96}
    simplex = biject_to(constraints.simplex)(draws[:, 1:])
    expected = torch.quantile(simplex, torch.tensor([0.5, 0.975]), dim=0)
    assert torch.allclose(values["p"], expected)


def test_a_flow_with_any_nonzero_last_weight_is_no_longer_the_identity():
    from pyro_realnvp.flows import RealNVP
    from pyro_realnvp.guide.summaries import flow_is_identity

    flow = RealNVP(3, num_layers=2)
    assert flow_is_identity(flow)
    with torch.no_grad():
        flow.layers[1].net[-1].bias[0] = 1e-6
    assert not flow_is_identity(flow)

"""Behaviour pinned across refactors: the same losses at the same seeds.

The numbers were recorded on main at 897fef0, before the package was split into
sub-packages (issue 27), in float64 so that they hold across CPUs to many digits. A
change that moves them changes what users get, and must say so.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_realnvp import AutoRealNVP, RealNVP, fit, fit_density

#: Losses at steps 0, 20, ..., 180 and 199 of each pinned run.
FIT_FAST = [
    10.855574274890998, 2.1904780994661865, 1.0667295297302197, 0.9718743935743216,
    0.629434753230975, 0.6344341236052011, 0.613432881608934, 0.7667886682693723,
    0.5188025153838389, 0.5326798576469367, 0.41820618552527544,
]  # fmt: skip
FIT_SVI = [
    0.5662652032774194, -1.3179761021726955, 6.709513353334373, 3.0539731558082845,
    1.8628437946822025, 1.512158580735548, 1.08811376204498, 1.6318402711741236,
    0.4219762011891337, 0.9898421200020877, 0.5623634625490563,
]  # fmt: skip
FIT_DENSITY = [
    3.601924353973078, 2.9142199800921555, 2.657371480082183, 2.350058055421983,
    2.320577291335974, 2.1288359041328104, 2.178224763447019, 2.180876246532574,
    2.1223628291395578, 2.222058735925435, 2.1729253846457035,
]  # fmt: skip
STEPS = [*range(0, 200, 20), 199]


@pytest.fixture
def float64():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def funnel(dim: int = 10) -> None:
    v = pyro.sample("v", dist.Normal(0.0, 3.0))
    scale = torch.exp(v / 2)[..., None].expand(v.shape + (dim - 1,))
    pyro.sample("x", dist.Normal(0.0, scale).to_event(1))


@pytest.mark.parametrize(
    ("fast", "expected", "method"),
    [(None, FIT_FAST, "fast"), (False, FIT_SVI, "svi")],
    ids=["fast-path", "pyro-elbo"],
)
@pytest.mark.usefixtures("float64")
def test_fit_on_the_funnel_gives_the_pinned_losses(fast, expected, method):
    pyro.set_rng_seed(0)
    losses = fit(funnel, AutoRealNVP(funnel), num_steps=200, progress=False, fast=fast)
    assert losses.method == method
    torch.testing.assert_close([losses[i] for i in STEPS], expected, rtol=1e-7, atol=1e-9)


@pytest.mark.usefixtures("float64")
def test_fit_density_gives_the_pinned_losses():
    pyro.set_rng_seed(0)
    data = torch.randn(1000, 2, generator=torch.Generator().manual_seed(0))
    data[:, 1] = data[:, 1] * 0.5 + data[:, 0] ** 2
    losses = fit_density(
        RealNVP(2, num_layers=4), data, num_steps=200, progress=False,
        generator=torch.Generator().manual_seed(1),
    )  # fmt: skip
    torch.testing.assert_close([losses[i] for i in STEPS], FIT_DENSITY, rtol=1e-7, atol=1e-9)

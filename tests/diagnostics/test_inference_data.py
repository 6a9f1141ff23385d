"""The ArviZ export of a guide's draws: groups, dims, az.summary, log-weights."""

import warnings

import arviz as az
import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from diagnostic_models import (
    GLOBAL_GUIDES,
    POST_MEAN,
    POST_SD,
    ROWS,
    SIGMA,
    Y,
    near_posterior,
    schools,
    schools_guide,
    subsampled_local_latents,
    subsampled_observations,
)
from pyro.infer.autoguide import AutoNormal

from pyro_realnvp import to_inference_data


@pytest.fixture(scope="module")
def idata():
    pyro.clear_param_store()
    return to_inference_data(schools, schools_guide(), SIGMA, Y, num_samples=100)


@pytest.mark.parametrize(
    ("group", "dims"),
    [
        ("posterior", {"mu": (), "tau": (), "weights": ("weights_dim_0",), "theta": ("school",)}),
        ("posterior_predictive", {"obs": ("school",)}),
        ("log_likelihood", {"obs": ("school",)}),
    ],
    ids=["posterior", "posterior_predictive", "log_likelihood"],
)
def test_inference_data_groups_have_sites_with_plate_dims(idata, group, dims):
    dataset = idata[group]
    for name, site_dims in dims.items():
        assert dataset[name].dims == ("chain", "draw", *site_dims), name
    assert (dataset.sizes["chain"], dataset.sizes["draw"]) == (4, 100)


def test_inference_data_keeps_deterministic_sites_and_observations(idata):
    assert np.allclose(idata.posterior["shift"], idata.posterior["theta"] - idata.posterior["mu"])
    assert np.array_equal(idata.observed_data["obs"].values, Y.numpy())
    assert idata.observed_data["obs"].dims == ("school",)


def test_inference_data_draws_are_the_guides_in_constrained_space(idata):
    theta = idata.posterior["theta"].mean(("chain", "draw")).values
    assert np.allclose(theta, np.arange(8.0) * 10, atol=0.1)
    assert (idata.posterior["tau"] > 0).all()
    assert np.allclose(idata.posterior["weights"].sum("weights_dim_0"), 1.0, atol=1e-5)


def test_inference_data_round_trips_through_az_summary(idata):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # ArviZ's shape check wants two chains or more
        full = az.summary(idata, var_names=["mu", "tau"])
    assert full["r_hat"].notna().all()
    summary = az.summary(idata, var_names=["mu", "tau", "theta"], kind="stats")
    expected = ["mu", "tau"] + [f"theta[{i}]" for i in range(8)]
    assert list(summary.index) == expected
    assert summary.loc["theta[7]", "mean"] == pytest.approx(70.0, abs=0.1)


def test_log_weights_are_log_p_minus_log_q():
    def model():
        pyro.sample("x", dist.Normal(0.0, 1.0))

    guide = AutoNormal(model, init_scale=0.5)
    data = to_inference_data(model, guide, num_samples=50)
    x = torch.as_tensor(data.posterior["x"].values[0])
    expected = dist.Normal(0.0, 1.0).log_prob(x) - dist.Normal(0.0, 0.5).log_prob(x)
    actual = torch.as_tensor(data.sample_stats["log_weight"].values[0])
    assert torch.allclose(actual, expected, atol=1e-5)


@pytest.mark.parametrize("guide_class", GLOBAL_GUIDES.values(), ids=GLOBAL_GUIDES)
def test_subsampled_observations_are_all_read_by_to_inference_data(guide_class):
    guide = near_posterior(guide_class)
    data = to_inference_data(subsampled_observations, guide, num_samples=50)
    assert np.array_equal(data.observed_data["y"].values, ROWS.numpy())
    assert data.log_likelihood["y"].dims == ("chain", "draw", "data")
    assert data.log_likelihood.sizes["data"] == 100
    # Every row at scale 1: log w = log N(mu; 0, 1) + sum_i log N(y_i; mu, 1) - log q(mu).
    mu = torch.as_tensor(data.posterior["mu"].values[0])
    by_hand = (
        dist.Normal(0.0, 1.0).log_prob(mu)
        + dist.Normal(mu[:, None], 1.0).log_prob(ROWS).sum(-1)
        - dist.Normal(POST_MEAN, 1.2 * POST_SD).log_prob(mu)
    )
    log_weight = torch.as_tensor(data.sample_stats["log_weight"].values[0])
    assert torch.allclose(log_weight, by_hand, rtol=1e-5, atol=1e-3)


def test_a_local_latent_kept_per_row_is_drawn_for_every_row():
    pyro.clear_param_store()
    guide = AutoNormal(subsampled_local_latents)
    data = to_inference_data(subsampled_local_latents, guide, num_samples=20)
    assert data.posterior["z"].dims == ("chain", "draw", "data")
    assert data.posterior.sizes["data"] == 100

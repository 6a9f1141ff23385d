"""Importance-resampled draws: closer to the posterior than the guide, aligned across
groups, repeatable under Pyro's seed, and honest about what they rest on."""

import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch
from diagnostic_models import POST_MEAN, POST_SD, ROWS
from pyro.infer.autoguide import AutoNormal, init_to_value

from pyro_realnvp import to_inference_data
from pyro_realnvp.diagnostics import importance_draws, importance_resample, smoothed_weights
from pyro_realnvp.diagnostics.weights import take


def rows_model(rows=ROWS):
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    with pyro.plate("data", len(rows)):
        pyro.sample("y", dist.Normal(mu, 1.0), obs=rows)


def shifted_guide(shift=1.0, scale=2.0):
    """A guide one posterior sd off the mean and twice as wide: k-hat well below 0.5."""
    pyro.clear_param_store()
    init = init_to_value(values={"mu": POST_MEAN + shift * POST_SD})
    return AutoNormal(rows_model, init_loc_fn=init, init_scale=scale * POST_SD)


def test_resampled_draws_are_closer_to_the_posterior_than_the_guides():
    pyro.set_rng_seed(0)
    guide = shifted_guide()
    raw = importance_draws(rows_model, guide, num_samples=4000).latent["mu"]
    resampled = importance_resample(rows_model, guide, num_samples=4000, proposals=8)
    mu = resampled.draws.latent["mu"]
    assert abs(float(raw.mean()) - float(POST_MEAN)) > 0.8 * POST_SD
    assert abs(float(mu.mean()) - float(POST_MEAN)) < 0.1 * POST_SD
    assert abs(float(mu.std()) / POST_SD - 1) < 0.1  # the guide's is 2
    assert resampled.khat < 0.5


def test_effective_sample_size_is_of_the_proposals_and_resampled_indices_within():
    pyro.set_rng_seed(1)
    resampled = importance_resample(rows_model, shifted_guide(), num_samples=500, proposals=4)
    assert resampled.num_proposals == 2000
    assert 1 < resampled.ess < 2000
    assert torch.isclose(resampled.weights.sum(), torch.tensor(1.0, dtype=torch.float64))
    assert int(resampled.indices.min()) >= 0
    assert int(resampled.indices.max()) < 2000
    assert resampled.distinct <= 500


def test_every_group_is_taken_at_the_same_draws():
    pyro.set_rng_seed(2)
    draws = importance_draws(rows_model, shifted_guide(), num_samples=50, predictive=True)
    indices = torch.tensor([3, 3, 7, 0])
    taken = take(draws, indices)
    assert torch.equal(taken.latent["mu"], draws.latent["mu"][indices])
    assert torch.equal(taken.log_weights, draws.log_weights[indices])
    expected = dist.Normal(taken.latent["mu"][:, None], 1.0).log_prob(ROWS)
    torch.testing.assert_close(taken.log_likelihood["y"], expected)
    assert taken.predictive["y"].shape == (4, len(ROWS))


def test_pyros_seed_repeats_the_resampling():
    guide = shifted_guide()
    picks = []
    for _ in range(2):
        pyro.set_rng_seed(3)
        picks.append(importance_resample(rows_model, guide, num_samples=100).indices)
    assert torch.equal(*picks)


def test_equal_weights_give_equal_smoothed_weights_and_every_draw_its_share():
    weights, khat = smoothed_weights(torch.full((400,), -3.2))
    assert torch.allclose(weights, torch.full((400,), 1 / 400, dtype=torch.float64))
    assert khat < 0
    uneven, _ = smoothed_weights(torch.randn(400, generator=torch.Generator().manual_seed(0)))
    assert float(uneven.max()) > 2 / 400
    assert abs(float(uneven.sum()) - 1) < 1e-12


def test_a_guide_far_too_narrow_warns_that_resampling_cannot_restore_the_tails():
    pyro.set_rng_seed(4)
    guide = shifted_guide(shift=0.0, scale=0.2)
    with pytest.warns(UserWarning, match=r"k-hat is .* \(above 0.7\)"):
        importance_resample(rows_model, guide, num_samples=200)


@pytest.mark.parametrize(
    ("option", "value"), [("proposals", 0), ("num_samples", 0), ("proposals", 1.5)]
)
def test_bad_counts_are_refused_by_name(option, value):
    with pytest.raises((ValueError, TypeError), match=option):
        importance_resample(rows_model, shifted_guide(), **{option: value})


def test_inference_data_with_resampling_holds_the_resampled_draws_and_what_they_rest_on():
    pyro.set_rng_seed(5)
    guide = shifted_guide()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # k-hat is good here: nothing to warn about
        idata = to_inference_data(rows_model, guide, num_samples=1000, resample=True,
                                  proposals=8)  # fmt: skip
    mu = torch.as_tensor(idata.posterior["mu"].values)
    assert mu.shape == (4, 1000)
    assert abs(float(mu.mean()) - float(POST_MEAN)) < 0.1 * POST_SD
    proposal = idata.sample_stats["proposal"].values
    assert proposal.shape == (4, 1000)
    assert proposal.max() < 32000
    assert idata.attrs["num_proposals"] == 32000
    assert idata.attrs["pareto_k"] < 0.5
    assert 1 < idata.attrs["importance_ess"] < 32000
    log_lik = torch.as_tensor(idata.log_likelihood["y"].values)
    expected = dist.Normal(mu[..., None].double(), 1.0).log_prob(ROWS.double())
    torch.testing.assert_close(log_lik.double(), expected, rtol=1e-5, atol=1e-5)

import math

import numpy as np
import pyro
import pytest
import torch
from diagnostic_models import (
    GLOBAL_GUIDES,
    cauchy,
    conjugate,
    correlated_gaussian,
    funnel,
    near_posterior,
    subsampled_observations,
)
from pyro.infer.autoguide import AutoNormal

from pyro_realnvp import AutoRealNVP, KHat, fit, khat_reading, psis_khat


@pytest.mark.parametrize(
    ("khat", "reading"),
    [
        (-0.1, "good"),
        (0.49, "good"),
        (0.5, "ok"),
        (0.7, "ok"),
        (0.71, "bad"),
        (math.inf, "bad"),
        (-math.inf, "good"),
    ],
    ids=["negative", "below-half", "half", "point-seven", "above", "infinite", "minus-infinite"],
)
def test_khat_reading(khat, reading):
    assert khat_reading(khat) == reading == KHat(khat).reading


def test_khat_is_low_for_realnvp_on_an_easy_posterior():
    guide = AutoRealNVP(correlated_gaussian, num_layers=2, hidden_dims=(16,), init_scale=1.0)
    fit(correlated_gaussian, guide, num_steps=200, lr=0.05, progress=False)
    khat = psis_khat(correlated_gaussian, guide, num_samples=2000)
    assert khat < 0.5, khat
    assert khat.trustworthy


def test_khat_is_high_for_autonormal_on_the_funnel():
    guide = AutoNormal(funnel)
    fit(funnel, guide, num_steps=300, lr=0.05, progress=False)
    khat = psis_khat(funnel, guide)  # the median of 10 sets of 2000 draws
    assert khat > 0.7, khat
    assert khat.reading == "bad"


@pytest.mark.parametrize("guide_class", GLOBAL_GUIDES.values(), ids=GLOBAL_GUIDES)
def test_psis_khat_of_subsampled_observations_reads_every_row(guide_class):
    # On a 10-row minibatch scaled by 10 this guide reads "bad" (k-hat about 1.3).
    pyro.set_rng_seed(1)
    khat = psis_khat(subsampled_observations, near_posterior(guide_class), num_samples=2000)
    assert khat < 0.5, khat


def test_numpy_integer_num_samples_is_accepted():
    pyro.set_rng_seed(0)
    guide = AutoNormal(funnel)
    assert math.isfinite(psis_khat(funnel, guide, num_samples=np.int64(50)))


@pytest.mark.parametrize("num_samples", [50, 200])
@pytest.mark.parametrize("seed", range(4))
def test_a_guide_equal_to_the_posterior_reads_good(seed, num_samples):
    # The Laplace start of an untrained AutoRealNVP is exact on a conjugate Normal: the
    # log-weights are log p(y) up to rounding, which a Pareto fit used to call inf.
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    khat = psis_khat(conjugate, AutoRealNVP(conjugate), torch.tensor(0.7), num_samples=num_samples)
    assert khat.reading == "good", khat


@pytest.mark.parametrize("seed", range(3))
def test_a_guide_with_too_light_tails_still_gets_a_finite_high_khat(seed):
    # Regression guard for the constant-weights shortcut: real spread is still fitted.
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    khat = psis_khat(cauchy, AutoNormal(cauchy, init_scale=1.0), num_samples=200)
    assert math.isfinite(khat), khat
    assert khat > 0.7, khat


def test_each_sets_khat_is_arviz_psislw_on_the_same_log_weights():
    import arviz as az

    from pyro_realnvp.diagnostics.khat import _pareto_khat

    log_weights = torch.distributions.StudentT(3.0).sample((2000,)).double()
    _, expected = az.psislw(log_weights.numpy())
    assert _pareto_khat(log_weights)[0] == pytest.approx(float(expected), abs=1e-9)


def test_an_exact_guide_gets_a_finite_khat_as_arviz_does():
    # Constant log-weights up to rounding: ArviZ reads a finite (negative) k-hat.
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    khat = psis_khat(conjugate, AutoRealNVP(conjugate), torch.tensor(0.7), num_samples=500,
                     num_sets=3)  # fmt: skip
    assert all(math.isfinite(k) for k in khat.sets)
    assert khat == -1.0  # no tail: a uniform tail's shape
    assert khat.near_exact
    assert khat.ess > 0.99


def test_a_near_exact_guide_reads_good_whatever_its_pareto_shape():
    khat = KHat(1.02, sets=(0.9, 1.02, 1.1), ess=1.0, log_weight_sd=0.05, max_weight_ratio=2.4,
                num_samples=2000)  # fmt: skip
    assert khat_reading(khat) == "bad"  # the bare number
    assert khat.reading == "good"
    assert "near exact" in khat.summary()
    spread = KHat(1.02, log_weight_sd=0.3, max_weight_ratio=2.4)
    assert spread.reading == "bad"  # weights that spread are read by their shape


def test_the_summary_says_the_reading_why_and_how_sure():
    khat = KHat(0.62, sets=(0.55, 0.62, 0.7), ess=0.4, log_weight_sd=0.8, max_weight_ratio=30.0,
                num_samples=2000)  # fmt: skip
    assert khat.summary() == (
        "k-hat 0.62 reads ok (0.5 to 0.7); median of 3 sets of 2000 draws, 0.55-0.70; "
        "importance ESS 40%"
    )
    assert khat.spread == (0.55, 0.7)


def test_the_max_weight_ratio_is_per_set_not_pooled():
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    guide = AutoNormal(funnel)
    khat = psis_khat(funnel, guide, num_samples=200, num_sets=4)
    assert math.isfinite(khat.max_weight_ratio)
    assert len(khat.sets) == 4
    assert khat.num_samples == 200


def test_nan_data_with_validation_off_are_named_not_read_as_infinite_khat():
    def model(y):
        mu = pyro.sample("mu", pyro.distributions.Normal(0.0, 1.0))
        with pyro.plate("rows", len(y)):
            pyro.sample("y", pyro.distributions.Normal(mu, 1.0), obs=y)

    y = torch.tensor([0.1, float("nan"), 0.3])
    guide = AutoNormal(model)
    with pyro.validation_enabled(False), pytest.raises(ValueError, match="model site 'y'"):
        psis_khat(model, guide, y, num_samples=50, num_sets=2)


def test_the_first_diagnostic_prints_nothing(capfd):
    import subprocess
    import sys

    code = (
        "import pyro, pyro.distributions as dist\n"
        "from pyro.infer.autoguide import AutoNormal\n"
        "from pyro_realnvp import psis_khat\n"
        "model = lambda: pyro.sample('x', dist.Normal(0.0, 1.0))\n"
        "psis_khat(model, AutoNormal(model), num_samples=50, num_sets=2)\n"
    )
    done = subprocess.run([sys.executable, "-W", "default", "-c", code], capture_output=True,
                          text=True, check=True)  # fmt: skip
    assert done.stdout == ""
    assert "arviz_base" not in done.stderr
    assert "Warning" not in done.stderr

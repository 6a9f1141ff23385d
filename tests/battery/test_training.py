"""Bad-input battery: faults met while training, as issue 28 found them.

A model undefined at part of its prior (a square root of a latent that can be negative),
one that rarely rejects a draw, a run that diverges at too large an lr, a model that
reads its data as Python numbers, and Pyro's baseball example's start. Each case asserts
the ideal answer: training that works, or an error or warning that names the site, says
what happened and what to do, and says nothing false.
"""

import math
import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch
from helpers import HITS, baseball

from pyro_realnvp import AutoRealNVP, NonFiniteLossError, fit

TINY = {"num_layers": 2, "hidden_dims": (8,)}
ROWS = torch.tensor([0.5, 1.0, 0.7])


@pytest.fixture(autouse=True)
def fresh_store():
    pyro.clear_param_store()
    yield
    pyro.clear_param_store()


def sqrt_of_latent():
    # Undefined for x < 0, where half of its prior lies.
    x = pyro.sample("x", dist.Normal(0.0, 1.0))
    with pyro.plate("rows", 3):
        pyro.sample("y", dist.Normal(torch.sqrt(x), 1.0), obs=ROWS)


def rarely_rejects():
    # Undefined for x < 0 too, but its prior puts 0.1% there.
    x = pyro.sample("x", dist.Normal(3.0, 1.0))
    with pyro.plate("rows", 3):
        pyro.sample("y", dist.Normal(torch.sqrt(x), 1.0), obs=ROWS + 1.0)


def funnel():
    v = pyro.sample("v", dist.Normal(0.0, 3.0))
    pyro.sample("x", dist.Normal(torch.zeros(9), torch.exp(v / 2)).to_event(1))


def float_of_data(data):
    mu = pyro.sample("mu", dist.Normal(float(data.mean()), 1.0))
    with pyro.plate("rows", len(data)):
        pyro.sample("y", dist.Normal(mu, 1.0), obs=data)


@pytest.mark.parametrize("seed", range(10), ids=lambda s: f"set-up-at-nan-seed-{s}")
def test_a_set_up_whose_start_the_model_rejects_names_the_site_and_values(seed):
    pyro.set_rng_seed(seed)
    guide = AutoRealNVP(sqrt_of_latent, **TINY)
    try:
        values = guide()
    except ValueError as error:  # init_to_median drew x < 0
        message = str(error)
        assert "site 'y'" in message
        assert "x=-" in message
        assert "init_to_value" in message
        assert guide.prototype_trace is None  # the next call sets up from scratch
    else:
        assert bool(values["x"] >= 0)


@pytest.mark.parametrize("seed", range(3), ids=lambda s: f"domain-seed-{s}")
def test_a_model_undefined_where_its_prior_is_trains_or_says_why(seed):
    pyro.set_rng_seed(seed)
    guide = AutoRealNVP(sqrt_of_latent, **TINY)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            losses = fit(sqrt_of_latent, guide, num_steps=60, progress=False)
    except NonFiniteLossError as error:
        message = str(error)
        assert "site 'y'" in message
        assert "prior on the model's domain" in message
        assert "particle plate" not in message
    else:
        assert all(math.isfinite(loss) for loss in losses)
        assert "site 'y'" in losses.note or any("redrawn" in str(w.message) for w in caught)


@pytest.mark.parametrize("seed", range(5), ids=lambda s: f"rare-rejection-seed-{s}")
def test_a_model_that_rarely_rejects_a_draw_trains_on_every_seed(seed):
    pyro.set_rng_seed(seed)
    guide = AutoRealNVP(rarely_rejects, **TINY)
    losses = fit(rarely_rejects, guide, num_steps=100, progress=False)
    assert all(math.isfinite(loss) for loss in losses)
    assert losses.method == "fast"


@pytest.mark.parametrize("seed", range(2), ids=lambda s: f"lr-1-funnel-seed-{s}")
def test_a_run_that_diverges_says_so_and_not_that_the_guide_is_usable(seed):
    pyro.set_rng_seed(seed)
    guide = AutoRealNVP(funnel, **TINY)
    try:
        losses = fit(funnel, guide, num_steps=300, lr=1.0, progress=False)
    except NonFiniteLossError as error:
        message = str(error)
        if "still usable" in message:  # only true where the run had not run off
            assert abs(float(guide.median()["v"])) < 20
        else:
            assert "diverged" in message
            assert "smaller lr" in message
        losses = error.history
    assert len(losses) >= 1


def test_a_model_reading_its_data_as_numbers_trains_on_the_fast_path():
    data = torch.tensor([0.3, -0.5, 1.2])
    losses = fit(float_of_data, AutoRealNVP(float_of_data, **TINY), data, num_steps=5,
                 progress=False)  # fmt: skip
    assert all(math.isfinite(loss) for loss in losses)
    assert losses.method == "fast", losses.note


@pytest.mark.parametrize("seed", range(3), ids=lambda s: f"baseball-start-seed-{s}")
def test_the_start_of_pyros_baseball_example_warns_nothing_or_at_the_users_line(seed):
    pyro.set_rng_seed(seed)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        AutoRealNVP(baseball, **TINY)(torch.full((18,), 45.0), HITS)
    ours = [w for w in caught if "Hessian" in str(w.message)]
    for warning in ours:
        assert warning.filename == __file__  # the user's line, not Pyro's guides.py
        assert "init_loc_fn" in str(warning.message) or "start" in str(warning.message)

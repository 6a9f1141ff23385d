"""The set-up's checks of observed sites: finite where unmasked, inside the support,
shaped as the plates say; each refusal names the site."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine

from pyro_realnvp.guide.observed import check_observed


def trace_of(fn, data, plate_size=None):
    def model():
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        with pyro.plate("rows", plate_size or len(data)):
            pyro.sample("y", fn(mu), obs=data)

    return poutine.trace(model).get_trace()


def test_unmasked_nan_is_refused_naming_the_site_and_index():
    data = torch.tensor([0.1, float("nan"), 0.3])
    with pytest.raises(ValueError, match=r"site 'y' holds 1 NaN .*\(NaN\), at index \[\[1\]\]"):
        check_observed(trace_of(lambda mu: dist.Normal(mu, 1.0), data))


def test_a_nan_under_a_false_mask_is_accepted():
    def model():
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        with pyro.plate("rows", 3), poutine.mask(mask=torch.tensor([True, False, True])):
            pyro.sample("y", dist.Normal(mu, 1.0), obs=torch.tensor([0.1, float("nan"), 0.3]))

    check_observed(poutine.trace(model).get_trace())


@pytest.mark.parametrize("validate", [True, False])
def test_data_outside_a_continuous_support_are_refused_either_way(validate):
    data = torch.tensor([0.5, -1.0])
    with pyro.validation_enabled(validate), pytest.raises(ValueError, match="site 'y' .* support"):
        check_observed(trace_of(lambda mu: dist.Exponential(mu.exp()), data))


def test_fractional_counts_pass_with_validation_off_only():
    data = torch.tensor([1.5, 2.0])
    poisson = lambda mu: dist.Poisson(mu.exp())  # noqa: E731
    with pyro.validation_enabled(False):
        check_observed(trace_of(poisson, data))  # relaxed counts: a deliberate use
    with pyro.validation_enabled(True), pytest.raises(ValueError, match="site 'y'"):
        check_observed(trace_of(poisson, data))


def test_a_plate_smaller_than_the_data_is_refused_as_not_broadcasting():
    with pytest.raises(ValueError, match="site 'y'.*do not broadcast.*pyro.plate"):
        check_observed(trace_of(lambda mu: dist.Normal(mu, 1.0), torch.zeros(4), plate_size=3))


def test_rows_without_a_plate_are_refused_under_validation_only():
    def model():
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        pyro.sample("y", dist.Normal(mu, 1.0), obs=torch.zeros(4))

    with pytest.raises(ValueError, match="site 'y'.*reach beyond.*pyro.plate"):
        check_observed(poutine.trace(model).get_trace())
    with pyro.validation_enabled(False):
        check_observed(poutine.trace(model).get_trace())


def test_factor_and_deterministic_sites_are_not_data():
    def model():
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        pyro.factor("pull", -(mu**2))
        pyro.deterministic("twice", mu * float("nan"))

    check_observed(poutine.trace(model).get_trace())

"""Where a model raised: the user's source line and the site it names."""

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_realnvp._internal.locate import raised_at

NAN = torch.tensor(float("nan"))


def error_of(model):
    with pytest.raises(ValueError, match="Expected parameter") as error:
        model()
    return error.value


def test_a_distribution_that_raises_before_pyro_sample_is_named_by_its_statement():
    def model():
        pyro.sample("y", dist.Normal(NAN, 1.0))

    where = raised_at(error_of(model))
    assert where.startswith(" at site 'y' (test_locate.py:")
    assert 'in model: `pyro.sample("y", dist.Normal(NAN, 1.0))`' in where


def test_a_statement_over_several_lines_is_named_from_any_of_them():
    def model():
        pyro.sample(
            "spread",
            dist.Normal(
                0.0,
                -torch.ones(()),
            ),
        )

    where = raised_at(error_of(model))
    assert where.startswith(" at site 'spread' (")
    assert '`pyro.sample( "spread", dist.Normal( 0.0, -torch.ones(()), ), )`' in where


def test_a_factor_is_named_too():
    def model():
        pyro.factor("penalty", NAN)

    assert raised_at(error_of(model)).startswith(" at site 'penalty' (")


def test_a_line_that_is_no_site_statement_gives_the_line_alone():
    def model():
        scale = dist.Normal(0.0, -1.0)
        pyro.sample("y", scale)

    where = raised_at(error_of(model))
    assert "site" not in where
    assert where.endswith("in model: `scale = dist.Normal(0.0, -1.0)`)")


def test_a_long_statement_is_cut():
    def model():
        loc = NAN
        pyro.sample(
            "y",
            dist.Normal(loc + loc + loc + loc + loc + loc + loc + loc + loc + loc, 1.0),
            obs=torch.zeros(()),
            infer={"note": "long enough to be cut"},
        )

    source = raised_at(error_of(model)).split("`")[1]
    assert len(source) == 120
    assert source.endswith("...")


def test_an_error_raised_inside_libraries_only_is_not_located():
    with pytest.raises(ValueError, match="Expected parameter") as error:
        dist.Normal(NAN, 1.0)  # the frame of this test is the innermost user frame ...
    assert raised_at(error.value).startswith(" (test_locate.py:")
    error.value.__traceback__ = error.value.__traceback__.tb_next  # ... without it, none
    assert raised_at(error.value) == ""

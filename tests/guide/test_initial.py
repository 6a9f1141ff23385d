"""The guide's initial values: init_loc_fn checked when the guide is built, the values it
gives checked at set-up, each failure named by its site."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.distributions import constraints
from pyro.infer.autoguide import init_to_feasible, init_to_median, init_to_value

from pyro_realnvp import AutoRealNVP
from pyro_realnvp._internal.locate import partial_trace
from pyro_realnvp.guide.initial import (
    MAX_LISTED_SITES,
    check_init_loc_fn,
    check_init_values,
    format_values,
    init_value_names,
)

SMALL = {"num_layers": 2, "hidden_dims": (8,)}


def scalar_latents(count):
    def model():
        for i in range(count):
            pyro.sample(f"z{i}", dist.Normal(0.0, 1.0))

    return model


def trace_at(model, values):
    init = init_to_value(values={k: torch.as_tensor(v) for k, v in values.items()})
    return partial_trace(pyro.infer.autoguide.initialization.InitMessenger(init)(model))


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (float("nan"), "site 'z0' a non-finite value: nan"),
        ([0.0, 1.0], r"site 'z0' a value of shape \(2,\), but the site's shape is \(\)"),
    ],
)
def test_a_bad_initial_value_is_named_by_its_site(value, message):
    trace = trace_at(scalar_latents(2), {"z0": value})
    with pytest.raises(ValueError, match=message):
        check_init_values(trace, shapes=True)


def test_a_value_outside_the_support_is_named():
    def model():
        pyro.sample("s", dist.LogNormal(0.0, 1.0))

    with pytest.raises(ValueError, match="site 's' a value outside its support GreaterThan"):
        check_init_values(trace_at(model, {"s": -1.0}))


def test_the_values_listed_are_cut_after_a_few_sites():
    sites = MAX_LISTED_SITES + 3
    trace = trace_at(scalar_latents(sites), {f"z{i}": 0.5 for i in range(sites)})
    text = format_values(trace)
    assert text.startswith("z0=0.5, z1=0.5, ")
    assert text.endswith(", ... (3 more)")
    assert text.count("=") == MAX_LISTED_SITES


def test_a_big_value_is_listed_by_its_shape():
    def model():
        pyro.sample("w", dist.Normal(torch.zeros(10), 1.0).to_event(1))

    assert format_values(trace_at(model, {"w": torch.zeros(10)})) == "w=<tensor of shape (10,)>"


def test_a_model_failing_at_good_values_names_where_and_the_values():
    def model():
        v = pyro.sample("v", dist.Normal(0.0, 1.0))
        pyro.sample("s", dist.LogNormal(0.0, 1.0))
        pyro.factor("bad", v * torch.nan)

    values = {"v": torch.tensor(0.1), "s": torch.tensor(2.0)}
    guide = AutoRealNVP(model, init_loc_fn=init_to_value(values=values), **SMALL)
    with pytest.raises(ValueError, match="the model raised at site 'bad'") as error:
        guide()
    assert "after site 's' (the last sample site it reached)" in str(error.value)
    assert "at init_loc_fn's values (v=0.1, s=2)" in str(error.value)


def test_a_random_initialisation_is_reported_at_the_values_it_failed_at():
    def model():
        x = pyro.sample("x", dist.Normal(0.0, 1.0))
        pyro.sample("y", dist.Normal(torch.sqrt(x - 10.0), 1.0), obs=torch.tensor(0.0))

    pyro.set_rng_seed(3)
    median = init_to_median({"name": "x", "fn": dist.Normal(0.0, 1.0), "value": None})
    pyro.set_rng_seed(3)
    guide = AutoRealNVP(model, init_loc_fn=init_to_median, **SMALL)
    with pytest.raises(ValueError, match="at init_loc_fn's values") as error:
        guide()
    assert f"(x={median.item():.4g})" in str(error.value)


def test_only_init_to_value_has_names():
    assert init_value_names(init_to_value(values={"a": torch.zeros(())})) == {"a"}
    assert init_value_names(init_to_median) == frozenset()
    assert init_value_names(None) == frozenset()


def test_an_unknown_support_is_not_what_is_checked():
    # A value the checks cannot read (not a tensor) is left to Pyro's own messages.
    def model():
        pyro.sample("o", dist.ImproperUniform(constraints.real, (), ()))

    trace = trace_at(model, {"o": 0.0})
    check_init_values(trace, shapes=True)
    trace.nodes["o"]["value"] = "x"
    check_init_values(trace, shapes=True)
    assert format_values(trace) == "o='x'"


def test_non_finite_init_is_rejected_naming_the_site():
    def model():
        pyro.sample("s", dist.HalfNormal(1.0))

    with pytest.raises(ValueError, match=r"\['s'\]"):
        AutoRealNVP(model, init_loc_fn=lambda site: torch.tensor(0.0))()


def beta_and_scale_model():
    s = pyro.sample("s", dist.LogNormal(0.0, 1.0))
    pyro.sample("p", dist.Beta(2.0, 2.0))
    pyro.sample("y", dist.Normal(0.0, s), obs=torch.tensor(0.0))


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"p": 1.5}, "init_loc_fn gave site 'p' a value outside its support"),
        ({"s": -1.0}, "init_loc_fn gave site 's' a value outside its support"),
        ({"s": float("nan")}, "init_loc_fn gave site 's' a non-finite value"),
    ],
)
def test_initial_values_the_model_cannot_take_are_refused_naming_init_loc_fn(values, message):
    values = {name: torch.tensor(value) for name, value in values.items()}
    guide = AutoRealNVP(beta_and_scale_model, init_loc_fn=init_to_value(values=values))
    with pytest.raises(ValueError, match=message):
        guide()


def test_a_site_that_cannot_be_sampled_by_the_default_init_is_named():
    def model():
        o = pyro.sample("o", dist.ImproperUniform(dist.constraints.ordered_vector, (), (3,)))
        pyro.sample("obs", dist.Normal(o, 1.0).to_event(1), obs=torch.tensor([-1.0, 0.0, 1.0]))

    with pytest.raises(ValueError, match="the default init_to_median .* at site 'o'") as error:
        AutoRealNVP(model, **SMALL)()
    assert "init_loc_fn=pyro.infer.autoguide.init_to_value(values={'o': " in str(error.value)
    with pytest.raises(ValueError, match="init_loc_fn could not give .* site 'o'") as error:
        AutoRealNVP(model, init_loc_fn=init_to_feasible, **SMALL)()
    assert "init_to_feasible all draw a sample" in str(error.value)  # not advised again
    start = init_to_value(values={"o": torch.tensor([-1.0, 0.0, 1.0])})
    assert AutoRealNVP(model, init_loc_fn=start, **SMALL)()["o"].shape == (3,)


def test_a_misspelt_init_to_value_name_is_refused():
    start = init_to_value(values={"muu": torch.tensor(5.0)})
    with pytest.raises(ValueError, match=r"values for \['muu'\], which are not sites") as error:
        AutoRealNVP(beta_and_scale_model, init_loc_fn=start, **SMALL)()
    assert "its latent sites are ['p', 's']" in str(error.value)


def test_init_to_value_may_name_any_site_of_the_model():
    # An observed site is a site (Pyro ignores its value there): not a misspelling.
    start = init_to_value(values={"s": torch.tensor(2.0), "y": torch.tensor(0.0)})
    guide = AutoRealNVP(beta_and_scale_model, init_loc_fn=start, **SMALL)
    assert guide.median()["s"] == pytest.approx(2.0)


def test_init_to_value_takes_plain_numbers_as_tensors():
    start = check_init_loc_fn(init_to_value(values={"p": 0.3, "s": [2.0]}))
    values = start.keywords["values"]
    assert torch.equal(values["p"], torch.tensor(0.3))
    assert torch.equal(values["s"], torch.tensor([2.0]))
    guide = AutoRealNVP(beta_and_scale_model, init_loc_fn=init_to_value(values={"p": 0.3}),
                        **SMALL)  # fmt: skip
    guide()
    assert float(guide.median()["p"]) == pytest.approx(0.3, abs=1e-5)


@pytest.mark.parametrize("init_loc_fn", ["median", 0.5, init_to_value(values={"p": "a"})])
def test_an_init_loc_fn_that_is_not_a_strategy_is_named(init_loc_fn):
    with pytest.raises(TypeError, match="init_loc_fn must be None|value for site 'p'"):
        AutoRealNVP(beta_and_scale_model, init_loc_fn=init_loc_fn)

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import init_to_value
from pyro.optim import Adam
from torch.distributions import biject_to

from pyro_realnvp import AutoRealNVP
from pyro_realnvp.guide.units import StartUnits, loc_units


def test_the_map_is_center_plus_scale_times_the_unconstrained_value():
    f64 = {"dtype": torch.float64}
    units = StartUnits(torch.tensor([5.0, -1.0], **f64), torch.tensor([1e-4, 3.0], **f64))
    delta = torch.tensor([2.0, -0.5], **f64)
    value = biject_to(units)(delta)
    assert torch.allclose(value, torch.tensor([5.0002, -2.5], **f64))
    assert torch.allclose(biject_to(units).inv(value), delta)
    assert bool(units.check(torch.tensor(1e30)))


def regression():
    """A slope on x near 2000, as in posteriordb's kilpisjarvi: its sd is about 1e-4."""
    generator = torch.Generator().manual_seed(0)
    x = torch.linspace(1950.0, 2010.0, 60, dtype=torch.float64)
    y = 0.02 * (x - 1980.0) + torch.randn(60, generator=generator, dtype=torch.float64)

    def model():
        alpha = pyro.sample("alpha", dist.Normal(torch.zeros((), dtype=torch.float64), 100.0))
        beta = pyro.sample("beta", dist.Normal(torch.zeros((), dtype=torch.float64), 1.0))
        with pyro.plate("data", 60):
            pyro.sample("y", dist.Normal(alpha + beta * x, 1.0), obs=y)

    return model


def test_adam_moves_the_location_by_about_lr_of_its_start_scale():
    pyro.clear_param_store()
    model = regression()
    guide = AutoRealNVP(model, num_layers=2)
    svi = SVI(model, guide, Adam({"lr": 0.01}), Trace_ELBO())
    first = svi.step()
    before = guide.loc.detach().clone()
    second = svi.step()
    moved = (guide.loc.detach() - before).abs()
    assert bool((moved <= 0.011 * guide.start_scale).all())  # a raw loc would move by 0.01
    assert guide.start_scale[1] < 1e-3  # the slope's width: 0.01 would be tens of sds
    assert second < first + 50  # raw, the second loss was in the tens of thousands


def test_a_state_dict_carries_the_units_to_a_guide_with_another_start():
    pyro.clear_param_store()
    model = regression()
    trained = AutoRealNVP(model, num_layers=2)
    svi = SVI(model, trained, Adam({"lr": 0.01}), Trace_ELBO())
    for _ in range(3):
        svi.step()
    state = {k: v.clone() for k, v in trained.state_dict().items()}
    pyro.clear_param_store()
    other = AutoRealNVP(model, num_layers=2, init_loc_fn=init_to_value(
        values={"alpha": torch.tensor(3.0, dtype=torch.float64),
                "beta": torch.tensor(0.5, dtype=torch.float64)}))  # fmt: skip
    other._pyro_name = "other"
    other()
    assert not torch.allclose(other.loc, trained.loc)
    other.load_state_dict(state)
    assert torch.allclose(other.loc, trained.loc)


def test_a_state_saved_with_a_raw_location_still_loads_as_that_location():
    pyro.clear_param_store()
    model = regression()
    guide = AutoRealNVP(model, num_layers=2)
    guide()
    state = guide.state_dict()
    raw = guide.loc.detach().clone() + 0.25
    old = {k: v for k, v in state.items() if k not in ("start_loc", "start_scale")}
    old["loc_unconstrained"] = raw  # what a guide from before this parameterization saved
    guide.load_state_dict(old)
    assert torch.allclose(guide.loc, raw)


def test_units_come_only_from_a_converged_start_with_positive_curvature():
    from pyro_realnvp.guide.laplace import GaussianStart

    pyro.clear_param_store()
    guide = AutoRealNVP(regression(), num_layers=2)
    guide()
    pyro.clear_param_store()  # no stored units: the start's rule alone
    loc, tril = torch.tensor([1.0, 2.0, 3.0]), torch.diag(torch.tensor([1e-3, 2e-3, 3e-3]))
    bad = torch.tensor([False, True, False])
    kinds = {
        "laplace": torch.tensor([1e-3, 1.0, 3e-3]),  # bad curvature: a unit of 1 there
        "local": torch.ones(3),
    }
    for kind, expected in kinds.items():
        center, unit = loc_units(GaussianStart(loc, tril, bad, kind=kind), None)
        assert torch.equal(center, loc)
        assert torch.allclose(unit, expected), kind

"""AutoRealNVP's Pyro contract: quantiles and median, and life as a PyroModule."""

import copy
import io
import pickle
import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.distributions import constraints
from pyro.distributions.transforms import AffineTransform, OrderedTransform
from pyro.infer import SVI, Predictive, Trace_ELBO
from pyro.infer.autoguide import (
    AutoGuideList,
    init_to_feasible,
    init_to_median,
    init_to_sample,
    init_to_value,
)
from torch.distributions import biject_to

from pyro_realnvp import AutoRealNVP, fit
from pyro_realnvp._internal.compat import unpack_latent

SMALL = {"num_layers": 2, "hidden_dims": (8,)}
LEVELS = [0.05, 0.25, 0.5, 0.75, 0.95]


class UpperBounded(dist.TransformedDistribution):
    """A distribution below 2, so the ``biject_to`` map to its support is decreasing."""

    support = constraints.less_than(2.0)


def upper_bounded():
    return UpperBounded(dist.Exponential(1.0), [AffineTransform(2.0, -1.0)])


def ordered_normal():
    return dist.TransformedDistribution(
        dist.Normal(torch.zeros(3), 1.0).to_event(1), [OrderedTransform()]
    )


def many_supports():
    """One site per kind of support: elementwise increasing, decreasing, and mixing."""
    pyro.sample("x", dist.Normal(1.0, 2.0))
    pyro.sample("s", dist.LogNormal(0.0, 0.5))
    pyro.sample("b", dist.Beta(2.0, 5.0))
    pyro.sample("h", dist.HalfCauchy(1.0))
    pyro.sample("upper", upper_bounded())
    pyro.sample("w", dist.Dirichlet(torch.tensor([2.0, 3.0, 5.0])))
    pyro.sample("o", ordered_normal())
    pyro.sample("chol", dist.LKJCholesky(3, 2.0))


SITES = ["x", "s", "b", "h", "upper", "w", "o", "chol"]
NOT_ELEMENTWISE = {"w", "o", "chol"}


def moved_from_identity(guide):
    from helpers import randomize_

    randomize_(guide.flow, std=0.2)
    return guide


def guide_in(state):
    """The guide at its start (flow = identity), or with its flow moved away from it."""
    guide = AutoRealNVP(many_supports, init_loc_fn=init_to_median, **SMALL)
    guide()
    return moved_from_identity(guide) if state == "moved" else guide


def guide_draws(guide, num_samples=20000):
    predictive = Predictive(guide.model, guide=guide, num_samples=num_samples, parallel=True)
    return predictive()


@pytest.mark.parametrize("state", ["initial", "moved"])
@pytest.mark.parametrize("site", SITES)
def test_quantiles_increase_with_the_level(site, state):
    guide = guide_in(state)
    q = guide.quantiles(LEVELS)[site]
    assert q.shape == (len(LEVELS),) + guide.median()[site].shape
    # Not strictly: some coordinates of a Cholesky factor are constants (0 and 1).
    assert (q.diff(dim=0) >= 0).all(), q
    assert (q.diff(dim=0) > 0).any(), q


@pytest.mark.parametrize("state", ["initial", "moved"])
@pytest.mark.parametrize("site", SITES)
def test_quantiles_are_those_of_the_guide_draws(site, state):
    guide = guide_in(state)
    q = guide.quantiles(LEVELS)[site]
    z = guide_draws(guide)[site]
    # The fraction of 20000 guide draws below each quantile is its level, up to the
    # error of the 4096 fixed draws behind some of them (sd 0.008 at most): allow 0.03.
    below = torch.stack([(z <= level_q).double().mean(0) for level_q in q])
    expected = torch.tensor(LEVELS, dtype=below.dtype).reshape((-1,) + (1,) * (below.dim() - 1))
    defined = q.diff(dim=0).abs().sum(0) > 0  # constant coordinates (chol[0, 0] = 1)
    assert ((below - expected).abs()[:, defined] < 0.03).all(), below


@pytest.mark.parametrize(
    "init_loc_fn",
    [
        init_to_median,
        init_to_feasible,
        init_to_sample,
        init_to_value(values={"s": torch.tensor(2.5), "w": torch.tensor([0.6, 0.3, 0.1])}),
    ],
    ids=["median", "feasible", "sample", "value"],
)
def test_median_starts_at_the_values_of_init_loc_fn(init_loc_fn):
    guide = AutoRealNVP(many_supports, init_loc_fn=init_loc_fn, **SMALL)
    guide()
    median = guide.median()
    # The prototype trace holds the values init_loc_fn gave (Pyro's own bookkeeping).
    initial = {name: site["value"] for name, site in guide.prototype_trace.iter_stochastic_nodes()}
    off = [n for n in SITES if not torch.allclose(median[n], initial[n], rtol=1e-6, atol=1e-6)]
    assert off == []


def test_median_of_the_default_start_is_where_it_starts():
    guide = AutoRealNVP(many_supports, **SMALL)
    guide()
    median = guide.median()
    start = {
        site["name"]: biject_to(site["fn"].support)(value[0])
        for site, value in unpack_latent(guide, guide.start.loc[None])
    }
    assert sorted(start) == sorted(SITES)
    off = [n for n in SITES if not torch.allclose(median[n], start[n], rtol=1e-6, atol=1e-6)]
    assert off == []


@pytest.mark.parametrize("site", sorted(set(SITES) - NOT_ELEMENTWISE))
def test_median_is_the_middle_quantile_for_elementwise_supports(site):
    guide = guide_in("moved")
    assert torch.equal(guide.median()[site], guide.quantiles([0.5])[site][0])


@pytest.mark.parametrize("site", sorted(NOT_ELEMENTWISE))
def test_median_lies_on_the_support_where_coordinate_quantiles_need_not(site):
    guide = guide_in("moved")
    support = guide.prototype_trace.nodes[site]["fn"].support
    assert bool(support.check(guide.median()[site]).all())


@pytest.mark.parametrize("levels", [[-0.1, 0.5], [0.5, 1.5], [float("nan")]])
def test_quantile_levels_outside_the_unit_interval_are_rejected(levels):
    guide = AutoRealNVP(lambda: pyro.sample("x", dist.Normal(0.0, 1.0)), **SMALL)
    with pytest.raises(ValueError, match=r"quantiles must lie in \[0, 1\]"):
        guide.quantiles(levels)


def two_site_model(data):
    def model():
        mu = pyro.sample("mu", dist.Normal(0.0, 10.0))
        scale = pyro.sample("scale", dist.LogNormal(0.0, 1.0))
        with pyro.plate("data", len(data)):
            pyro.sample("y", dist.Normal(mu, scale), obs=data)

    return model


DATA = torch.tensor([0.3, 1.1, 0.8, 1.9, 1.2])


def trained(model=None, steps=5):
    model = model or two_site_model(DATA)
    guide = AutoRealNVP(model, **SMALL)
    fit(model, guide, num_steps=steps, lr=0.05, progress=False)
    return model, guide


def values(guide):
    return {name: p.detach().clone() for name, p in guide.named_parameters()}


def changed(before, guide):
    after = values(guide)
    return {name for name in before if not torch.equal(before[name], after[name])}


def test_frozen_guide_calls_without_warnings_and_stays_frozen():
    _, guide = trained()
    guide.requires_grad_(False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        guide()
        pyro.clear_param_store()  # frozen and no longer stored: still silent
        guide()
    assert not any(p.requires_grad for p in guide.parameters())


def test_frozen_flow_is_not_trained_while_the_affine_is():
    model, guide = trained()
    guide.flow.requires_grad_(False)
    before = values(guide)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fit(model, guide, num_steps=5, lr=0.05, progress=False)
    moved = changed(before, guide)
    assert "loc_unconstrained" in moved
    assert not any(name.startswith("flow.") for name in moved)


def test_call_under_no_grad_leaves_a_guide_that_trains():
    model, guide = trained()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("error")
        sample = guide()
    assert all(value.grad_fn is None for value in sample.values())
    before = values(guide)
    fit(model, guide, num_steps=3, lr=0.05, progress=False)
    assert any(name.startswith("flow.") for name in changed(before, guide))


def test_deep_copy_after_training_has_parameters_of_its_own():
    _, guide = trained()
    guide()  # leaves non-leaf tensors in the flow's cache
    before, model = values(guide), guide.model
    clone = copy.deepcopy(guide)
    assert clone.model is model
    assert guide.model is model  # Pyro's AutoGuide.__getstate__ deletes it
    ours = {id(p) for p in guide.parameters()}
    assert not any(id(p) in ours for p in clone.parameters())
    assert all(torch.equal(before[n], p) for n, p in clone.named_parameters())
    clone.loc = clone.loc.detach() + 1.0
    torch.nn.init.normal_(clone.flow.layers[0].net[-1].weight)
    assert changed(before, guide) == set()


def test_renamed_copy_trains_apart_from_the_original():
    model, guide = trained()
    clone = copy.deepcopy(guide)
    clone._pyro_name = "copy"
    before, before_clone = values(guide), values(clone)
    fit(model, clone, num_steps=5, lr=0.05, progress=False)
    assert changed(before, guide) == set()
    assert "loc_unconstrained" in changed(before_clone, clone)
    assert any(name.startswith("copy.flow") for name in pyro.get_param_store().keys())


def test_same_named_copy_takes_the_stored_parameters_like_every_pyro_guide():
    _, guide = trained()
    clone = copy.deepcopy(guide)
    clone()
    # Its flow follows the store exactly as its loc does (Pyro's documented sharing): the
    # store holds the flow as one tensor, and both flows' parameters are views of it.
    assert clone.loc_unconstrained is guide.loc_unconstrained
    pairs = zip(clone.flow.parameters(), guide.flow.parameters(), strict=True)
    assert all(a is not b and a.data_ptr() == b.data_ptr() for a, b in pairs)
    with torch.no_grad():
        guide.flow.layers[0].net[-1].weight.add_(1.0)
    assert torch.equal(clone.flow.layers[0].net[-1].weight, guide.flow.layers[0].net[-1].weight)


def test_two_guides_with_different_names_train_side_by_side():
    data_a, data_b = DATA, DATA + 5.0
    model_a, model_b = two_site_model(data_a), two_site_model(data_b)
    guide_a, guide_b = AutoRealNVP(model_a, **SMALL), AutoRealNVP(model_b, **SMALL)
    guide_b._pyro_name = "second"
    optim = pyro.optim.Adam({"lr": 0.02})
    svi_a = SVI(model_a, guide_a, optim, Trace_ELBO())
    svi_b = SVI(model_b, guide_b, optim, Trace_ELBO())
    for _ in range(30):
        svi_a.step()
        svi_b.step()
    ids_a = {id(p) for p in guide_a.parameters()}
    assert not any(id(p) in ids_a for p in guide_b.parameters())
    # Each median stays near its own data (sharing would pull one to the other's).
    assert abs(guide_a.median()["mu"] - data_a.mean()) < 0.5
    assert abs(guide_b.median()["mu"] - data_b.mean()) < 0.5


def test_guides_inside_a_guide_list_keep_their_flows_apart():
    def model():
        pyro.sample("a", dist.Normal(0.0, 1.0))
        pyro.sample("b", dist.LogNormal(0.0, 1.0))

    guide = AutoGuideList(model)
    guide.append(AutoRealNVP(poutine.block(model, expose=["a"]), **SMALL))
    guide.append(AutoRealNVP(poutine.block(model, expose=["b"]), **SMALL))
    assert set(guide()) == {"a", "b"}
    flows = {name.split(".flow")[0] for name in pyro.get_param_store().keys() if ".flow" in name}
    assert flows == {"AutoGuideList.0", "AutoGuideList.1"}


def test_cleared_param_store_is_refilled_with_the_trained_parameters():
    model, guide = trained()
    before = values(guide)
    pyro.clear_param_store()
    guide()
    assert changed(before, guide) == set()
    stored = set(pyro.get_param_store().keys())
    assert {"AutoRealNVP.loc", "AutoRealNVP.flow"} <= stored
    fit(model, guide, num_steps=3, lr=0.05, progress=False)
    assert any(name.startswith("flow.") for name in changed(before, guide))


@pytest.mark.parametrize("how", ["torch.save", "pickle"])
def test_whole_guide_round_trip_keeps_the_posterior_and_the_original(how):
    _, guide = trained()
    guide()
    expected, model = guide.quantiles(LEVELS), guide.model
    if how == "torch.save":
        buffer = io.BytesIO()
        torch.save(guide, buffer)
        buffer.seek(0)
        restored = torch.load(buffer, weights_only=False)
    else:
        restored = pickle.loads(pickle.dumps(guide))
    assert guide.model is model
    for name, value in restored.quantiles(LEVELS).items():
        assert torch.equal(value, expected[name]), name


def test_module_local_params_train_the_flow_without_the_global_store():
    model = two_site_model(DATA)
    with pyro.settings.context(module_local_params=True):
        guide = AutoRealNVP(model, **SMALL)
        elbo = Trace_ELBO()(model, guide)
        elbo()  # set up
        optimizer = torch.optim.Adam(elbo.parameters(), lr=0.05)
        before = values(guide)
        for _ in range(3):
            optimizer.zero_grad()
            elbo().backward()
            optimizer.step()
    assert any(name.startswith("flow.") for name in changed(before, guide))
    assert len(pyro.get_param_store()) == 0


def test_freezing_before_the_first_call_freezes_what_set_up_creates():
    model = two_site_model(DATA)
    guide = AutoRealNVP(model, **SMALL)
    guide.requires_grad_(False)  # no parameter exists yet
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        guide()
    assert list(guide.parameters())
    assert not any(p.requires_grad for p in guide.parameters())
    guide.requires_grad_(True)
    assert all(p.requires_grad for p in guide.parameters())


def round_trip(guide):
    buffer = io.BytesIO()
    torch.save(guide, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)


def test_a_loaded_guide_says_its_model_was_not_saved_and_takes_it_back():
    model, guide = trained()
    restored = round_trip(guide)
    with pytest.raises(RuntimeError, match="loaded .* without its model.*guide.model = model"):
        restored.model  # noqa: B018
    restored.model = model
    trace = poutine.trace(restored.model).get_trace()
    assert {"mu", "scale", "y"} <= set(trace.nodes)


def test_a_loaded_guide_has_one_median_before_and_after_a_call():
    model, guide = trained()
    restored = round_trip(guide)
    fit(model, guide, num_steps=5, lr=0.1, progress=False)  # the store moves on
    current = guide.median()
    # Same name, so the loaded guide takes the store's values at its first call: its
    # median says so already before that call.
    before = restored.median()
    restored()
    after = restored.median()
    for name, value in current.items():
        assert torch.equal(before[name], value), name
        assert torch.equal(after[name], value), name


def test_a_guide_whose_parameters_went_non_finite_refuses_to_summarise_itself():
    _, guide = trained()
    with torch.no_grad():
        guide.flow.layers[1].net[-1].bias.fill_(float("nan"))
    with pytest.raises(ValueError, match=r"parameter\(s\) \['flow.layers.1.net.2.bias'\]"):
        guide.median()
    with pytest.raises(ValueError, match="hold NaN or infinite values"):
        guide.quantiles(LEVELS)


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning", "ignore:.*torch.jit.trace")
def test_jit_elbo_trains_a_guide_of_one_latent():
    def model():
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        pyro.sample("y", dist.Normal(mu, 1.0), obs=torch.tensor(0.5))

    guide = AutoRealNVP(model, **SMALL)  # its couplings' conditioners read no inputs
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.01}), pyro.infer.JitTrace_ELBO())
    for _ in range(50):
        svi.step()
    assert abs(guide.median()["mu"] - 0.25) < 0.1  # the posterior is N(0.25, 1/2)

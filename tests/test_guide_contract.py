"""AutoRealNVP's Pyro contract: life as a PyroModule."""

import copy
import io
import pickle
import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoGuideList

from pyro_realnvp import AutoRealNVP, fit

SMALL = {"num_layers": 2, "hidden_dims": (8,)}
LEVELS = [0.05, 0.25, 0.5, 0.75, 0.95]


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
    # Its flow follows the store exactly as its loc does (Pyro's documented sharing).
    assert clone.loc_unconstrained is guide.loc_unconstrained
    pairs = zip(clone.flow.parameters(), guide.flow.parameters(), strict=True)
    assert all(a is b for a, b in pairs)


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
    assert {"AutoRealNVP.loc", "AutoRealNVP.flow$$$layers.0.net.0.weight"} <= stored
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

"""The guide's side of the param store: round trips, and a stale entry refused."""

import copy
import pickle

import pyro
import pyro.distributions as dist
import pytest
import torch
from helpers import hierarchical
from pyro import poutine

from pyro_realnvp import AutoRealNVP, fit
from pyro_realnvp.guide import store

SMALL = {"num_layers": 4, "hidden_dims": (32, 32)}


def trained_guide():
    model = hierarchical(torch.randn(4, 3))
    guide = AutoRealNVP(model, **SMALL)
    fit(model, guide, num_steps=100, lr=0.02, progress=False)
    return model, guide


def test_state_dict_round_trip_restores_an_identical_posterior(tmp_path):
    model, guide = trained_guide()
    expected = guide.quantiles([0.1, 0.5, 0.9])
    torch.save(guide.state_dict(), tmp_path / "guide.pt")
    pyro.clear_param_store()
    restored = AutoRealNVP(model, **SMALL)
    restored()  # set up the prototype, then overwrite every parameter
    restored.load_state_dict(torch.load(tmp_path / "guide.pt"))
    for name, value in restored.quantiles([0.1, 0.5, 0.9]).items():
        assert torch.equal(value, expected[name]), name


def test_param_store_round_trip_restores_an_identical_posterior(tmp_path):
    model, guide = trained_guide()
    expected = guide.quantiles([0.1, 0.5, 0.9])
    pyro.get_param_store().save(tmp_path / "params.pt")
    pyro.clear_param_store()
    pyro.get_param_store().load(tmp_path / "params.pt")
    restored = AutoRealNVP(model, **SMALL)
    restored()
    for name, value in restored.quantiles([0.1, 0.5, 0.9]).items():
        assert torch.equal(value, expected[name]), name
    # Training continues on the loaded parameters, not on fresh copies.
    before = [p.detach().clone() for p in restored.flow.parameters()]
    fit(model, restored, num_steps=3, progress=False)
    after = restored.flow.parameters()
    assert any(not torch.equal(a, b) for a, b in zip(before, after, strict=True))


def test_stale_param_store_of_another_shape_is_reported():
    trained_guide()
    with pytest.raises(ValueError, match="clear_param_store"):
        AutoRealNVP(lambda: pyro.sample("x", dist.Normal(0.0, 1.0)), **SMALL)()


def test_forget_deletes_only_the_names_under_its_prefix():
    from pyro_realnvp.guide.store import forget

    for name in ("AutoRealNVP.loc", "AutoRealNVP.flow$$$w", "AutoRealNVPx.loc", "other"):
        pyro.param(name, torch.zeros(1))
    forget("AutoRealNVP.")
    assert sorted(pyro.get_param_store().keys()) == ["AutoRealNVPx.loc", "other"]


def flow_vector(guide):
    return torch.cat([p.detach().reshape(-1) for p in guide.flow.parameters()])


def plain_svi(model, guide, steps):
    """Pyro's own loop, as users write it; seeded, so two runs draw the same noise."""
    optim = pyro.optim.Adam({"lr": 0.01})
    svi = pyro.infer.SVI(model, guide, optim, pyro.infer.Trace_ELBO())
    pyro.set_rng_seed(1)
    for _ in range(steps):
        svi.step()
    return optim


def per_tensor(flow, name, packed, *hooks):
    """The declaration before the flow was one tensor: a param statement per tensor."""
    store.register_flow(flow, name)
    return packed, None


def seeded_guide(model, monkeypatch, old: bool, **options) -> AutoRealNVP:
    """A fresh guide in a cleared store, seeded; ``old``: declared a tensor at a time."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    if old:
        monkeypatch.setattr(store, "declare_flow", per_tensor)
    return AutoRealNVP(model, **SMALL, **options)


# "path": the gradients sync at the draw's hook; "total": at each parameter's.
@pytest.mark.parametrize("estimator", ["path", "total"])
def test_pyro_steps_the_flow_as_one_tensor_with_the_updates_it_made_per_tensor(
    monkeypatch, estimator
):
    model = hierarchical(torch.randn(4, 3))
    trained = {}
    for old in (False, True):
        guide = seeded_guide(model, monkeypatch, old, estimator=estimator)
        optim = plain_svi(model, guide, 20)
        trained[old] = (flow_vector(guide), len(optim.optim_objs))
    assert trained[False][1] == 4  # loc, scale, scale_tril and the flow
    assert trained[True][1] == 3 + len(list(guide.flow.parameters()))
    assert not torch.equal(trained[False][0], torch.zeros_like(trained[False][0]))
    assert torch.allclose(trained[False][0], trained[True][0], rtol=1e-5, atol=1e-6)


def test_the_store_holds_the_flow_as_one_tensor_the_flow_reads():
    model = hierarchical(torch.randn(4, 3))
    guide = AutoRealNVP(model, **SMALL)
    plain_svi(model, guide, 5)
    store = pyro.get_param_store()
    assert not any("$$$" in name for name in store.keys())
    flat = store["AutoRealNVP.flow"]
    assert torch.equal(flat.detach(), flow_vector(guide))
    with torch.no_grad():
        flat.add_(1.0)  # what Pyro's optimizer does to it
    assert torch.equal(flat.detach(), flow_vector(guide))


def test_the_store_holds_the_trained_flow_right_after_fit():
    model, guide = trained_guide()  # the fast path trains the flow's own tensors
    assert torch.equal(pyro.get_param_store()["AutoRealNVP.flow"].detach(), flow_vector(guide))


def test_a_torch_optimizer_over_the_guide_trains_the_flow_with_its_own_gradients():
    model = hierarchical(torch.randn(4, 3))
    guide = AutoRealNVP(model, **SMALL)
    guide()
    optimizer = torch.optim.Adam(guide.parameters(), lr=0.01)
    loss_fn = pyro.infer.Trace_ELBO().differentiable_loss
    before = flow_vector(guide)
    for _ in range(5):
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model, guide).backward()
        optimizer.step()
    assert not torch.equal(before, flow_vector(guide))
    assert torch.equal(pyro.get_param_store()["AutoRealNVP.flow"].detach(), flow_vector(guide))
    # Gradients accumulate as torch's do: two backward passes at one draw, twice one.
    optimizer.zero_grad(set_to_none=True)
    pyro.set_rng_seed(3)
    loss_fn(model, guide).backward()
    once = [p.grad.clone() for p in guide.flow.parameters()]
    pyro.set_rng_seed(3)
    loss_fn(model, guide).backward()
    assert all(
        torch.allclose(p.grad, 2 * g) for p, g in zip(guide.flow.parameters(), once, strict=True)
    )


def test_a_store_saved_with_a_tensor_per_flow_parameter_is_read_into_the_flow():
    model, guide = trained_guide()
    names = [name for name, _ in guide.flow.named_parameters()]
    old = {f"AutoRealNVP.flow$$${n}": p.detach() + 1.0 for n, p in guide.flow.named_parameters()}
    state = pyro.get_param_store().get_state()
    pyro.clear_param_store()
    for name, value in state["params"].items():
        if name != "AutoRealNVP.flow":
            pyro.get_param_store().setdefault(name, value, state["constraints"][name])
    for name, value in old.items():
        pyro.param(name, value)
    restored = AutoRealNVP(model, **SMALL)
    restored()
    assert torch.equal(flow_vector(restored), torch.cat([v.reshape(-1) for v in old.values()]))
    assert [n for n, _ in restored.flow.named_parameters()] == names
    assert not any("$$$" in name for name in pyro.get_param_store().keys())


def test_an_optimizer_over_the_store_zeroed_between_loss_and_backward_trains_the_flow(
    monkeypatch,
):
    model = hierarchical(torch.randn(4, 3))
    trained = []
    for old in (False, True):
        guide = seeded_guide(model, monkeypatch, old)
        loss_fn = pyro.infer.Trace_ELBO().differentiable_loss
        with poutine.trace(param_only=True) as capture:
            loss_fn(model, guide)
        params = {site["value"].unconstrained() for site in capture.trace.nodes.values()}
        optimizer = torch.optim.Adam(params, lr=0.01)
        pyro.set_rng_seed(1)
        for _ in range(5):  # the order of Lightning's automatic optimisation
            loss = loss_fn(model, guide)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        trained.append(flow_vector(guide))
    assert torch.allclose(trained[0], trained[1], rtol=1e-5, atol=1e-6)
    assert trained[0].abs().sum() > 0


def test_fit_trains_a_flow_whose_same_named_copy_was_called():
    model, guide = trained_guide()
    clone = copy.deepcopy(guide)
    clone()  # shares the stored tensor, as Pyro's guides of one name do
    before = flow_vector(guide)
    fit(model, guide, num_steps=5, progress=False)
    assert not torch.equal(before, flow_vector(guide))
    assert all(p.grad is None for p in guide.parameters())


def test_pickle_writes_each_flow_parameter_once():
    _, guide = trained_guide()
    size = sum(p.numel() * p.element_size() for p in guide.flow.parameters())
    assert len(pickle.dumps(guide.state_dict())) < 1.5 * size + 20_000
    assert len(pickle.dumps(guide)) < 1.5 * size + 100_000


def test_fit_trains_every_coupling_of_a_one_latent_flow():
    def model():  # each conditioner reads no inputs: its first weight is empty
        pyro.sample("x", dist.Gamma(2.0, 1.0))

    guide = AutoRealNVP(model, **SMALL)
    guide()
    before = [layer.net[-1].bias.detach().clone() for layer in guide.flow.layers]
    fit(model, guide, num_steps=20, progress=False)
    after = [layer.net[-1].bias for layer in guide.flow.layers]
    assert all(not torch.equal(a, b) for a, b in zip(after, before, strict=True))


def test_pyro_optimizer_after_a_backward_pass_that_creates_a_graph(monkeypatch):
    model = hierarchical(torch.randn(4, 3))
    trained = []
    for old in (False, True):
        guide = seeded_guide(model, monkeypatch, old)
        loss_fn = pyro.infer.Trace_ELBO().differentiable_loss
        optim = pyro.optim.Adam({"lr": 0.01})
        pyro.set_rng_seed(1)
        for _ in range(3):
            with poutine.trace(param_only=True) as capture:
                loss = loss_fn(model, guide)
            loss.backward(create_graph=True)  # torch accumulates out of place
            params = {site["value"].unconstrained() for site in capture.trace.nodes.values()}
            optim(params)
            pyro.infer.util.zero_grads(params)
        trained.append(flow_vector(guide))
    assert torch.allclose(trained[0], trained[1], rtol=1e-5, atol=1e-6)


def test_a_backward_pass_through_part_of_the_flow_leaves_the_rest_without_gradient():
    model = hierarchical(torch.randn(4, 3))
    guide = AutoRealNVP(model, **SMALL)
    pyro.infer.Trace_ELBO().differentiable_loss(model, guide).backward()
    guide.zero_grad()  # set_to_none
    first = guide.flow.layers[0]
    first(torch.randn(5, guide.latent_dim)).sum().backward()
    rest = [p for layer in guide.flow.layers[1:] for p in layer.parameters()]
    assert all(p.grad is None for p in rest)
    assert all(p.grad is not None for p in first.parameters())

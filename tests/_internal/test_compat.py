"""Each private Pyro or torch name the package relies on, pinned."""

import math
import random

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO
from pyro.infer.autoguide import AutoDiagonalNormal, init_to_value

from pyro_realnvp._internal.compat import (
    capture_graph,
    check_site_shape,
    count_elements,
    elbo_traces,
    full_data_plates,
    is_deterministic_site,
    prototype_hide_fn,
    rng_state,
    unpack_latent,
)


def plate_model():
    with pyro.plate("data", 50, subsample_size=5) as index:
        pyro.sample("y", dist.Normal(0.0, 1.0), obs=torch.zeros(len(index)))
    return index


def test_full_data_plates_yields_every_index_with_scale_one():
    with full_data_plates():
        trace = poutine.trace(plate_model).get_trace()
    assert torch.equal(trace.nodes["_RETURN"]["value"], torch.arange(50))
    assert trace.nodes["y"]["scale"] == 1.0


def test_full_data_plates_restores_subsampling_on_exit():
    try:
        with full_data_plates():
            raise KeyError("leave the block by an error")
    except KeyError:
        pass
    trace = poutine.trace(plate_model).get_trace()
    assert len(trace.nodes["_RETURN"]["value"]) == 5
    assert trace.nodes["y"]["scale"] == 10.0


def test_an_explicit_subsample_is_left_alone():
    def model():
        with pyro.plate("data", 50, subsample=torch.tensor([3, 7])) as index:
            return index

    with full_data_plates():
        assert model().tolist() == [3, 7]


# --- helpers the package calls instead of the private names ---------------------------


def two_site_model():
    pyro.sample("x", dist.Normal(torch.zeros(2), 1.0).to_event(1))
    pyro.sample("s", dist.LogNormal(0.0, 1.0))


def test_unpack_latent_splits_a_packed_latent_by_site_keeping_batch_dims():
    guide = AutoDiagonalNormal(two_site_model)
    guide()
    u = torch.arange(12.0).reshape(4, 3)
    unpacked = {site["name"]: value for site, value in unpack_latent(guide, u)}
    assert list(unpacked) == ["x", "s"]
    assert torch.equal(unpacked["x"], u[:, :2])
    assert torch.equal(unpacked["s"], u[:, 2])


def deterministic_model():
    x = pyro.sample("x", dist.Normal(0.0, 1.0))
    pyro.deterministic("double", 2 * x)
    pyro.sample("y", dist.Normal(x, 1.0), obs=torch.tensor(0.5))


@pytest.mark.parametrize(
    ("name", "expected"),
    [("double", True), ("x", False), ("y", False)],
    ids=["deterministic", "latent", "observed"],
)
def test_is_deterministic_site(name, expected):
    trace = poutine.trace(deterministic_model).get_trace()
    assert is_deterministic_site(trace.nodes[name]) is expected


def observed_model():
    x = pyro.sample("x", dist.Normal(0.0, 1.0))
    pyro.sample("y", dist.Normal(x, 1.0), obs=torch.tensor(0.5))


def normal_guide():
    pyro.sample("x", dist.Normal(0.3, 0.1))


def test_elbo_traces_replay_the_model_at_the_guide_draw():
    model_trace, guide_trace = elbo_traces(Trace_ELBO(), observed_model, normal_guide, (), {})
    assert model_trace.nodes["x"]["value"] is guide_trace.nodes["x"]["value"]
    assert model_trace.nodes["y"]["is_observed"]


def test_an_elbo_reads_its_traces_through_the_overridable_get_trace():
    # ELBOs that wrap another (infer/finite.py, distributed/ddp.py) forward this hook.
    calls = []

    class Recording(Trace_ELBO):
        def _get_trace(self, model, guide, args, kwargs):
            calls.append(True)
            return super()._get_trace(model, guide, args, kwargs)

    Recording(num_particles=2).loss(observed_model, normal_guide)
    assert len(calls) == 2


def test_rng_state_restores_torch_python_and_numpy():
    def draw():
        return torch.rand(1).item(), random.random(), np.random.rand()

    with rng_state():
        first = draw()
    assert draw() == first


def test_check_site_shape_refuses_a_log_prob_wider_than_its_plates():
    def model():
        with pyro.plate("p", 3):
            pyro.sample("inside", dist.Normal(torch.zeros(3), 1.0))
        pyro.sample("outside", dist.Normal(torch.zeros(3), 1.0))

    trace = poutine.trace(model).get_trace()
    trace.compute_log_prob()
    check_site_shape(trace.nodes["inside"], max_plate_nesting=1)
    with pytest.raises(ValueError, match="outside"):
        check_site_shape(trace.nodes["outside"], max_plate_nesting=1)


def test_prototype_hide_fn_keeps_only_latent_sample_sites():
    def model():
        pyro.param("p", torch.ones(1))
        x = pyro.sample("x", dist.Normal(0.0, 1.0))
        with pyro.plate("data", 4, subsample_size=2):
            pyro.sample("y", dist.Normal(x, 1.0), obs=torch.zeros(2))

    trace = poutine.trace(model).get_trace()
    kept = {name for name, site in trace.nodes.items() if not prototype_hide_fn(site)}
    assert kept == {"x"}


def test_capture_graph_replays_the_function_at_new_inputs():
    graph = capture_graph(lambda u: (u**2).sum(-1), torch.ones(3, 2))
    u = torch.randn(3, 2)
    assert torch.allclose(graph(u), (u**2).sum(-1))


def test_capture_graph_refuses_data_dependent_control_flow_by_that_name():
    # infer/fast.py turns this RuntimeError into a FastPathError by its wording.
    with pytest.raises(RuntimeError, match="data-dependent"):
        capture_graph(lambda u: u if u.sum() > 0 else -u, torch.ones(3))


def test_capture_graph_keeps_reads_of_constant_data_and_syncs_nothing_per_call():
    times = torch.tensor([0.0, 0.5, 2.0])

    def mesh(u):  # a time grid built from the data in Python, as an ODE model does
        return u * torch.linspace(0.0, float(times[-1]), int(times.numel()))

    graph = capture_graph(mesh, torch.ones(3))
    u = torch.randn(3)
    assert torch.equal(graph(u), mesh(u))
    reads = [n for n in graph.graph.nodes if "_local_scalar_dense" in str(n.target)]
    assert reads == []


def test_capture_graph_refuses_a_read_of_a_value_computed_from_the_input():
    data = torch.tensor([1.0, 2.0])
    with pytest.raises(RuntimeError, match="data-dependent"):
        capture_graph(lambda u: u * float((u * data).sum()), torch.ones(2))


# --- subclass contracts AutoRealNVP relies on (pinned, not wrapped) ----------------------


class Recorded(AutoDiagonalNormal):
    """Overrides the hooks AutoRealNVP overrides, recording that Pyro calls them."""

    _prototype_hide_fn = staticmethod(lambda msg: prototype_hide_fn(msg) or msg["name"] == "s")

    def _setup_prototype(self, *args, **kwargs):
        super()._setup_prototype(*args, **kwargs)
        self.setups = getattr(self, "setups", 0) + 1


def test_setup_prototype_runs_once_and_honours_prototype_hide_fn():
    guide = Recorded(two_site_model)
    guide()
    guide()
    assert guide.setups == 1
    assert list(guide._unconstrained_shapes) == ["x"]
    assert guide.latent_dim == 2


def test_init_loc_is_the_packed_unconstrained_start():
    init = init_to_value(values={"x": torch.tensor([1.0, 2.0]), "s": torch.tensor(3.0)})
    guide = AutoDiagonalNormal(two_site_model, init_loc_fn=init)
    guide()
    assert torch.allclose(guide._init_loc(), torch.tensor([1.0, 2.0, math.log(3.0)]))
    assert guide._unconstrained_shapes == {"x": torch.Size([2]), "s": torch.Size([])}


def test_pyro_module_names_its_params_as_the_param_store_does():
    pyro.clear_param_store()
    guide = AutoDiagonalNormal(two_site_model)
    guide()
    # A PyroParam attribute (AutoRealNVP's scale_tril) is listed; a plain Parameter is not.
    assert "scale" in guide._pyro_params
    assert "loc" not in guide._pyro_params
    assert guide._pyro_get_fullname("loc") == "AutoDiagonalNormal.loc"
    assert "AutoDiagonalNormal.loc" in pyro.get_param_store()


def test_get_checked_instance_gives_an_uninitialised_subclass_for_expand():
    class Wider(dist.Normal):
        def __init__(self, loc, scale, width=2.0):
            super().__init__(loc, width * scale)

    normal = Wider(torch.zeros(1), torch.ones(1))
    new = normal._get_checked_instance(Wider, None)
    assert type(new) is Wider
    expanded = dist.Normal.expand(normal, (3,), _instance=new)
    assert expanded is new
    assert expanded.batch_shape == (3,)


def test_count_elements_sees_every_operation_and_its_output_size():
    x = torch.ones(3, 4)
    # x * 2 makes 12 elements, .sum(-1) 3, .exp() 3.
    assert count_elements(lambda t: (t * 2).sum(-1).exp(), x) == 18
    assert count_elements(lambda t: t, x) == 0


def test_stored_constraint_reads_and_replaces_what_the_store_maps_values_with():
    from torch.distributions import constraints

    from pyro_realnvp._internal.compat import stored_constraint

    pyro.clear_param_store()
    pyro.param("q", torch.tensor([1.0, 2.0]), constraint=constraints.positive)
    assert stored_constraint("q") is constraints.positive
    unconstrained = pyro.get_param_store().get_state()["params"]["q"].detach().clone()
    stored_constraint("q", constraints.real)
    assert stored_constraint("q") is constraints.real
    assert torch.equal(pyro.param("q").detach(), unconstrained)  # now read through real
    assert stored_constraint("absent", constraints.real) is None

import numpy as np
import pyro.distributions as dist
import pytest
import torch
from helpers import randomize_
from pyro.distributions.conditional import ConditionalTransformModule
from torch import nn

from pyro_realnvp import MaskedAffineCoupling, alternating_mask
from pyro_realnvp.density import flow_distribution
from pyro_realnvp.flows.conditional import ConditionalRealNVP, ConditionedRealNVP

D, C = 3, 2


def make_flow(**kwargs):
    flow = ConditionalRealNVP(D, C, num_layers=4, hidden_dims=(16,), **kwargs)
    return randomize_(flow, std=0.3)


CONTEXT_SHAPES = {
    "one-context-per-row": ((6, D), (6, C)),
    "one-context-for-all": ((6, D), (C,)),
    "broadcast-draws-by-contexts": ((5, 1, D), (4, C)),
}


@pytest.mark.parametrize(("x_shape", "c_shape"), CONTEXT_SHAPES.values(), ids=CONTEXT_SHAPES)
def test_conditioned_round_trip(x_shape, c_shape):
    transform = make_flow().condition(torch.randn(c_shape))
    x = torch.randn(x_shape)
    y = transform(x)
    assert torch.allclose(transform.inv(y.clone()), x.expand_as(y), atol=1e-5)


def test_batch_of_contexts_equals_one_context_at_a_time():
    flow = make_flow()
    x, c = torch.randn(5, D), torch.randn(5, C)
    batched = flow.condition(c)
    y = batched(x)
    rows = torch.stack([flow.condition(c[i])(x[i]) for i in range(5)])
    assert torch.allclose(y, rows, atol=1e-6)
    log_det = batched.log_abs_det_jacobian(x, y)
    row_log_det = torch.stack(
        [flow.condition(c[i]).log_abs_det_jacobian(x[i], rows[i]) for i in range(5)]
    )
    assert torch.allclose(log_det, row_log_det, atol=1e-6)


def test_context_changes_the_map():
    flow = make_flow()
    x = torch.randn(4, D)
    assert not torch.allclose(flow.condition(torch.zeros(C))(x), flow.condition(torch.ones(C))(x))


@pytest.mark.parametrize("direction", ["forward", "inverse"])
def test_log_det_matches_autograd_per_context(direction):
    flow = make_flow(dtype=torch.float64)
    x = torch.randn(4, D, dtype=torch.float64)
    c = torch.randn(4, C, dtype=torch.float64)
    transform = flow.condition(c)
    if direction == "inverse":
        # Score points reached through the inverse pass: its own log-det is returned.
        y = x
        x = transform.inv(y)
        log_det = transform.log_abs_det_jacobian(x, y)
    else:
        log_det = transform.log_abs_det_jacobian(x, transform(x))
    for i in range(4):
        jacobian = torch.autograd.functional.jacobian(
            lambda v, i=i: flow.flow.forward_and_log_det(v, c[i])[0], x[i]
        )
        assert torch.allclose(log_det[i], torch.linalg.slogdet(jacobian)[1], atol=1e-8)


def test_fresh_flow_is_the_identity():
    flow = ConditionalRealNVP(D, C, num_layers=4)
    x = torch.randn(3, D)
    assert torch.equal(flow.condition(torch.randn(3, C))(x), x)


def test_log_prob_is_base_plus_log_det():
    flow = make_flow()
    density = flow_distribution(flow)
    y, c = torch.randn(5, D), torch.randn(5, C)
    transform = flow.condition(c)
    z = transform.inv(y.clone())
    by_hand = dist.Normal(0.0, 1.0).log_prob(z).sum(-1) - transform.log_abs_det_jacobian(
        z, transform(z)
    )
    assert torch.allclose(density.condition(c).log_prob(y), by_hand, atol=1e-5)


EMBEDDINGS = {
    "raw-context": {},
    "embedding-net": {"embedding": nn.Sequential(nn.Linear(C, 8), nn.Tanh()), "embedding_dim": 8},
}


@pytest.mark.parametrize("kwargs", EMBEDDINGS.values(), ids=EMBEDDINGS)
def test_gradients_reach_the_context_path(kwargs):
    flow = make_flow(**kwargs)
    c = torch.randn(5, C, requires_grad=True)
    flow_distribution(flow).condition(c).log_prob(torch.randn(5, D)).sum().backward()
    assert c.grad is not None
    assert c.grad.abs().sum() > 0
    if flow.embedding is not None:
        assert all(p.grad.abs().sum() > 0 for p in flow.embedding.parameters())


def test_is_a_pyro_conditional_transform_module():
    flow = make_flow()
    assert isinstance(flow, ConditionalTransformModule)
    assert isinstance(flow.condition(torch.zeros(C)), ConditionedRealNVP)


BAD_CONTEXTS = {"wrong-width": torch.zeros(4, C + 1), "scalar": torch.tensor(1.0)}


@pytest.mark.parametrize("context", BAD_CONTEXTS.values(), ids=BAD_CONTEXTS)
def test_wrong_context_shape_is_rejected(context):
    with pytest.raises(ValueError, match=r"context must have shape \(\.\.\., 2\)"):
        make_flow().condition(context)


MISMATCHED = {
    "forward": lambda transform, x: transform(x),
    "inverse": lambda transform, x: transform.inv(x),
    "log_prob": lambda transform, x: dist.TransformedDistribution(
        dist.Normal(torch.zeros(D), 1.0).to_event(1), transform
    ).log_prob(x),
}


@pytest.mark.parametrize("call", MISMATCHED.values(), ids=MISMATCHED)
def test_context_batch_that_does_not_broadcast_is_named(call):
    transform = make_flow().condition(torch.randn(5, C))
    expected = r"context must have shape \(\.\.\., 2\).*batch shape \(5,\).*\(4, 3\)"
    with pytest.raises(ValueError, match=expected):
        call(transform, torch.randn(4, D))


def test_context_error_gives_the_raw_width_behind_an_embedding():
    flow = make_flow(embedding=nn.Linear(C, 6), embedding_dim=6)
    with pytest.raises(ValueError, match=r"context must have shape \(\.\.\., 2\)"):
        flow.condition(torch.randn(5, C))(torch.randn(4, D))


def test_embedding_of_the_wrong_width_is_named():
    flow = ConditionalRealNVP(D, C, embedding=nn.Linear(C, 5), embedding_dim=4)
    with pytest.raises(ValueError, match=r"shape \(7, 5\).*\(\.\.\., 4\) \(embedding_dim\)"):
        flow.condition(torch.randn(7, C))


def test_embedding_without_its_width_is_rejected():
    with pytest.raises(ValueError, match="embedding_dim"):
        ConditionalRealNVP(D, C, embedding=nn.Linear(C, 4))


def test_conditional_coupling_without_context_is_rejected():
    layer = MaskedAffineCoupling(alternating_mask(D), (8,), context_dim=C)
    with pytest.raises(ValueError, match="needs a context"):
        layer(torch.randn(2, D))


BAD_SIZES = {
    "context_dim-float": ({"context_dim": 2.5}, TypeError, "context_dim must be an integer >= 1"),
    "context_dim-0": (
        {"context_dim": 0},
        ValueError,
        "context_dim must be an integer >= 1, got 0",
    ),
    "context_dim-none": ({"context_dim": None}, TypeError, "context_dim must be an integer >= 1"),
    "input_dim-float": ({"input_dim": 2.5}, TypeError, "input_dim must be an integer >= 1"),
    "input_dim-0": ({"input_dim": 0}, ValueError, "input_dim must be an integer >= 1, got 0"),
    "embedding_dim-float": (
        {"embedding": nn.Linear(C, 4), "embedding_dim": 4.5},
        TypeError,
        "embedding_dim must be an integer >= 1",
    ),
}


@pytest.mark.parametrize(("kwargs", "error", "message"), BAD_SIZES.values(), ids=BAD_SIZES)
def test_bad_sizes_are_named(kwargs, error, message):
    kwargs = {"input_dim": D, "context_dim": C, **kwargs}
    with pytest.raises(error, match=message):
        ConditionalRealNVP(**kwargs)


def test_numpy_integer_sizes_are_accepted():
    flow = ConditionalRealNVP(np.int64(D), np.int64(C), num_layers=2)
    assert (flow.input_dim, flow.context_dim) == (D, C)
    assert type(flow.context_dim) is int


def test_input_of_the_wrong_width_is_named_through_a_context():
    transform = make_flow().condition(torch.randn(C))
    with pytest.raises(ValueError, match=r"expects inputs of shape \(\.\.\., 3\), got \(4, 2\)"):
        transform(torch.randn(4, 2))


@pytest.mark.parametrize("call", ["forward", "inverse"])
def test_a_context_of_higher_precision_is_named_with_the_fix(call):
    transform = make_flow().condition(torch.randn(C, dtype=torch.float64))
    apply = transform if call == "forward" else transform.inv
    with pytest.raises(TypeError, match=r"context of dtype float64.*context\.float\(\)"):
        apply(torch.randn(4, D))


def test_an_integer_context_is_promoted_and_a_double_flow_takes_a_double_context():
    x = torch.randn(4, D)
    assert make_flow().condition(torch.ones(C, dtype=torch.long))(x).dtype == torch.float32
    flow = make_flow(dtype=torch.float64)
    assert flow.condition(torch.ones(C, dtype=torch.float64))(x.double()).dtype == torch.float64

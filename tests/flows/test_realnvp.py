import copy
import pickle
import re

import numpy as np
import pyro.distributions as dist
import pytest
import torch
from helpers import randomize_

from pyro_realnvp import MaskedAffineCoupling, RealNVP, realnvp


@pytest.mark.parametrize("dim", [2, 3, 8])
def test_every_coordinate_moves_after_stacking(dim):
    flow = randomize_(RealNVP(dim, num_layers=2, hidden_dims=(8,)))
    x = torch.randn(50, dim)
    assert ((flow(x) - x).abs() > 0).all(dim=0).all()


def test_one_dimensional_flow_is_affine():
    flow = randomize_(RealNVP(1, num_layers=4, hidden_dims=(4,)))
    x = torch.linspace(-3, 3, 7).unsqueeze(-1)
    y = flow(x).squeeze(-1)
    slopes = (y[1:] - y[:-1]) / (x[1:, 0] - x[:-1, 0])
    assert torch.allclose(slopes, slopes[0].expand_as(slopes), rtol=1e-4)


def test_transformed_distribution_log_prob_is_base_minus_log_det():
    flow = randomize_(RealNVP(3, num_layers=4, dtype=torch.float64))
    base = dist.Normal(torch.zeros(3).double(), 1.0).to_event(1)
    q = dist.TransformedDistribution(base, flow)
    y = torch.randn(5, 3, dtype=torch.float64)
    x = flow.inv(y.clone())
    expected = base.log_prob(x) - flow.log_abs_det_jacobian(x.clone(), y.clone())
    assert torch.allclose(q.log_prob(y), expected)


def test_rsample_then_log_prob_uses_the_cache_consistently():
    flow = randomize_(RealNVP(4, num_layers=4))
    q = dist.TransformedDistribution(dist.Normal(torch.zeros(4), 1.0).to_event(1), flow)
    y = q.rsample((6,))
    assert torch.allclose(q.log_prob(y), q.log_prob(y.clone()), atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_dtype_is_honoured(dtype):
    flow = realnvp(3, num_layers=2, dtype=dtype)
    assert {p.dtype for p in flow.parameters()} == {dtype}
    assert {b.dtype for b in flow.buffers() if b.is_floating_point()} == {dtype}


def test_state_dict_round_trip_gives_the_same_transform():
    flow = randomize_(RealNVP(4, num_layers=4))
    copy = RealNVP(4, num_layers=4)
    copy.load_state_dict(flow.state_dict())
    x = torch.randn(3, 4)
    assert torch.equal(copy(x), flow(x.clone()))


def test_deep_copy_after_a_call_with_gradients_has_an_empty_cache():
    flow = randomize_(RealNVP(3, num_layers=2, hidden_dims=(8,)))
    x = torch.randn(5, 3)
    y = flow(x)  # the one-slot cache now holds non-leaf tensors, which deepcopy refuses
    clone = copy.deepcopy(flow)
    assert clone._cached_x_y == (None, None)
    assert flow._cached_x_y[1] is y
    assert torch.equal(clone(x.clone()), y)


BAD_ARGS = {
    "input_dim-0": ({"input_dim": 0}, ValueError, "input_dim must be an integer >= 1, got 0"),
    "input_dim-negative": ({"input_dim": -1}, ValueError, "input_dim must be an integer >= 1"),
    "input_dim-float": ({"input_dim": 2.5}, TypeError, "input_dim must be an integer >= 1"),
    "num_layers-0": (
        {"input_dim": 2, "num_layers": 0},
        ValueError,
        "num_layers must be an integer >= 1, got 0",
    ),
    "num_layers-float": ({"input_dim": 2, "num_layers": 2.5}, TypeError, "num_layers must be"),
    "hidden-zero": (
        {"input_dim": 2, "hidden_dims": (0,)},
        ValueError,
        r"hidden_dims must be a sequence of integers >= 1, got \(0,\)",
    ),
    "hidden-float": ({"input_dim": 2, "hidden_dims": (8.5,)}, TypeError, "hidden_dims must be"),
    "hidden-int": ({"input_dim": 2, "hidden_dims": 16}, TypeError, "hidden_dims must be"),
}


@pytest.mark.parametrize("make", [RealNVP, realnvp], ids=["class", "factory"])
@pytest.mark.parametrize(("kwargs", "error", "message"), BAD_ARGS.values(), ids=BAD_ARGS)
def test_bad_constructor_arguments_are_named(make, kwargs, error, message):
    with pytest.raises(error, match=message):
        make(**kwargs)


def test_numpy_integer_sizes_are_accepted():
    flow = RealNVP(np.int64(3), num_layers=np.int32(2), hidden_dims=(np.int64(4),))
    assert flow.input_dim == 3
    assert len(flow.layers) == 2


def test_no_hidden_layer_is_an_invertible_flow():
    flow = randomize_(RealNVP(3, num_layers=4, hidden_dims=()))
    x = torch.randn(5, 3)
    y = flow(x)
    assert not torch.allclose(y, x)
    assert torch.allclose(flow.inv(y.clone()), x, atol=1e-5)


WRONG_WIDTH = {
    "forward": lambda flow, x: flow(x),
    "inverse": lambda flow, x: flow.inv(x),
    "log-det": lambda flow, x: flow.log_abs_det_jacobian(x, x.clone()),
}


@pytest.mark.parametrize("call", WRONG_WIDTH.values(), ids=WRONG_WIDTH)
@pytest.mark.parametrize("shape", [(4, 2), (4, 4), ()], ids=["narrow", "wide", "scalar"])
def test_input_of_the_wrong_width_is_named(call, shape):
    expected = re.escape(f"RealNVP expects inputs of shape (..., 3), got {shape}")
    with pytest.raises(ValueError, match=expected):
        call(RealNVP(3, num_layers=2), torch.randn(shape))


@pytest.mark.parametrize(
    "masks",
    [
        [[1, 0, 1, 0, 1], [0, 1, 0, 1, 0], [1, 1, 0, 0, 1], [0, 0, 1, 1, 0]],  # two pairs
        [[1, 0, 1, 0, 1], [1, 1, 0, 0, 0], [0, 1, 1, 0, 1]],  # no complementary neighbours
        [[1, 0, 0, 1, 0], [0, 1, 1, 0, 1], [1, 0, 0, 1, 0]],  # a run of three
    ],
    ids=["pairs", "unpaired", "run-of-three"],
)
def test_grouped_passes_equal_the_layers_applied_one_by_one(masks):
    # The flow hands the kept and moved halves from one layer to its complement instead
    # of merging after each layer; that must not change the map or its log-det.
    torch.manual_seed(0)
    layers = [MaskedAffineCoupling(torch.tensor(m), (8,)) for m in masks]
    for layer in layers:
        torch.nn.init.normal_(layer.net[-1].weight, std=0.5)
    flow = RealNVP.from_couplings(layers)
    x = torch.randn(6, 5, dtype=torch.float32)
    expected, expected_log_det = x, torch.zeros(6)
    for layer in layers:
        expected, s = layer._forward(expected)
        expected_log_det = expected_log_det + s.sum(-1)
    y, log_det = flow.forward_and_log_det(x)
    assert torch.allclose(y, expected, atol=1e-6)
    assert torch.allclose(log_det, expected_log_det, atol=1e-6)
    x_back, inverse_log_det = flow.inverse_and_log_det(y, detach=True)
    assert torch.allclose(x_back, x, atol=1e-5)
    assert torch.allclose(inverse_log_det, log_det, atol=1e-5)


def test_a_state_with_other_masks_is_loaded_with_its_own_groups_and_orders():
    # A checkpoint of alternating masks (older releases) loaded into a flow built with
    # bit masks: the pairs and the merge order must follow the loaded masks.
    torch.manual_seed(0)
    masks = [[1, 0, 1, 0], [0, 1, 0, 1], [1, 0, 1, 0], [0, 1, 0, 1]]
    saved = RealNVP.from_couplings([MaskedAffineCoupling(torch.tensor(m), (8,)) for m in masks])
    randomize_(saved, std=0.5, seed=3)
    flow = RealNVP(4, num_layers=4, hidden_dims=(8,))
    flow.load_state_dict(saved.state_dict())
    x = torch.randn(5, 4)
    assert torch.allclose(flow(x), saved(x), atol=1e-6)
    assert torch.allclose(flow.inv(flow(x).clone()), x, atol=1e-5)


def test_a_flow_pickled_before_the_derived_state_existed_still_runs():
    flow = randomize_(RealNVP(3, num_layers=2, hidden_dims=(8,)), std=0.5)
    x = torch.randn(4, 3)
    expected = flow(x)
    old = copy.deepcopy(flow)  # made to look like an object of an older release
    del old.__dict__["_groups"]
    for layer in old.layers:
        del layer.__dict__["input_bound"]
        del layer._buffers["unsplit"], layer._buffers["factor"]
        layer._non_persistent_buffers_set.clear()
    loaded = pickle.loads(pickle.dumps(old))
    assert torch.allclose(loaded(x), expected)


WRONG_INPUTS = {
    "float64": (torch.zeros(2, 3, dtype=torch.float64), r"float64.*flow\.double\(\)"),
    "integer": (torch.zeros(2, 3, dtype=torch.int32), r"floating-point input.*x\.float\(\)"),
    "numpy": (np.zeros((2, 3), dtype=np.float32), r"expects a torch\.Tensor.*as_tensor"),
}
CALLS = {
    "call": lambda flow, x: flow(x),
    "inverse": lambda flow, x: flow.inv(x),
    "forward_and_log_det": lambda flow, x: flow.forward_and_log_det(x),
    "inverse_and_log_det": lambda flow, x: flow.inverse_and_log_det(x),
    "forward_with_score": lambda flow, x: flow.forward_with_score(x, x),
}


@pytest.mark.parametrize(("x", "message"), WRONG_INPUTS.values(), ids=WRONG_INPUTS)
@pytest.mark.parametrize("call", CALLS.values(), ids=CALLS)
def test_an_input_of_another_type_or_dtype_is_named_with_the_fix(call, x, message):
    with pytest.raises(TypeError, match=message):
        call(RealNVP(3, num_layers=2, hidden_dims=(4,)), x)


def test_a_double_flow_takes_double_inputs_and_names_float_ones():
    flow = RealNVP(3, num_layers=2, hidden_dims=(4,)).double()
    assert flow(torch.zeros(2, 3, dtype=torch.float64)).dtype == torch.float64
    with pytest.raises(TypeError, match=r"float32, but its parameters are float64.*x\.double"):
        flow(torch.zeros(2, 3))

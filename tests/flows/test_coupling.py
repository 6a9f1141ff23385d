import functools
import math
import re

import numpy as np
import pytest
import torch
from helpers import randomize_
from torch import nn

from pyro_realnvp import MaskedAffineCoupling, alternating_mask, masked_affine_coupling
from pyro_realnvp.flows.conditioner import soft_clamp
from pyro_realnvp.flows.coupling import check_mask


def test_masked_coordinates_are_untouched():
    mask = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.0])
    layer = randomize_(MaskedAffineCoupling(mask, (16,)))
    x = torch.randn(20, 5)
    y = layer(x)
    kept = mask.bool()
    assert torch.equal(y[:, kept], x[:, kept])
    assert (y[:, ~kept] != x[:, ~kept]).all()


def test_forward_matches_paper_formula():
    mask = alternating_mask(4)
    layer = randomize_(MaskedAffineCoupling(mask, (8,), scale_bound=3.0))
    x = torch.randn(7, 4)
    kept, free = mask.bool(), ~mask.bool()
    s, t = torch.zeros(7, 4), torch.zeros(7, 4)
    raw_s, raw_t = (layer.net(x[:, kept]) * layer.output_gain).chunk(2, dim=-1)
    s[:, free], t[:, free] = soft_clamp(raw_s, 3.0), raw_t
    expected = mask * x + (1 - mask) * (x * torch.exp(s) + t)
    assert torch.allclose(layer(x), expected, atol=1e-6)
    y = expected.clone()
    s_y, t_y = torch.zeros(7, 4), torch.zeros(7, 4)
    raw_s, raw_t = (layer.net(y[:, kept]) * layer.output_gain).chunk(2, dim=-1)
    s_y[:, free], t_y[:, free] = soft_clamp(raw_s, 3.0), raw_t
    inverse = mask * y + (1 - mask) * (y - t_y) * torch.exp(-s_y)
    assert torch.allclose(layer.inv(y), inverse, atol=1e-6)
    assert torch.allclose(inverse, x, atol=1e-5)


def test_log_scale_saturates_at_the_bound():
    layer = MaskedAffineCoupling(alternating_mask(4), (8,), scale_bound=2.0)
    with torch.no_grad():
        layer.net[-1].bias.fill_(1e4)
    x = torch.randn(3, 4)
    log_det = layer.log_abs_det_jacobian(x, layer(x))
    assert torch.allclose(log_det, torch.full((3,), 2.0 * 2))


def test_factory_uses_alternating_mask():
    assert masked_affine_coupling(3, parity=0).mask.tolist() == [1.0, 0.0, 1.0]


@pytest.mark.parametrize("bound", [0.0, -1.0])
def test_non_positive_scale_bound_is_rejected(bound):
    with pytest.raises(ValueError, match="scale_bound"):
        MaskedAffineCoupling(alternating_mask(3), scale_bound=bound)


def test_bad_mask_is_rejected_by_the_layer():
    with pytest.raises(ValueError, match="binary"):
        MaskedAffineCoupling(torch.tensor([2.0, 0.0]))


WRONG_WIDTH = {
    "forward": lambda layer, x: layer(x),
    "inverse": lambda layer, x: layer.inv(x),
    "log-det": lambda layer, x: layer.log_abs_det_jacobian(x, x.clone()),
}


@pytest.mark.parametrize("call", WRONG_WIDTH.values(), ids=WRONG_WIDTH)
def test_input_of_the_wrong_width_is_named_by_the_layer(call):
    expected = re.escape("MaskedAffineCoupling expects inputs of shape (..., 4), got (3, 5)")
    with pytest.raises(ValueError, match=expected):
        call(masked_affine_coupling(4, (8,)), torch.randn(3, 5))


@pytest.mark.parametrize(
    ("context_dim", "error"), [(-1, ValueError), (1.5, TypeError)], ids=["negative", "float"]
)
def test_bad_context_dim_is_named_by_the_layer(context_dim, error):
    with pytest.raises(error, match="context_dim must be an integer >= 0"):
        masked_affine_coupling(4, (8,), context_dim=context_dim)


def test_forward_hooks_on_the_conditioner_run_in_the_forward_pass():
    # Users inspect activations with hooks; the coupling must call its net as a module.
    layer = MaskedAffineCoupling(torch.tensor([1.0, 0.0, 1.0]), hidden_dims=(4,))
    seen = []
    layer.net.register_forward_hook(lambda module, inputs, output: seen.append(output.shape))
    layer(torch.randn(5, 3))
    assert seen == [torch.Size([5, 2])]


def test_a_bounded_input_makes_the_layer_affine_far_out_and_keeps_it_invertible():
    torch.manual_seed(0)
    layer = MaskedAffineCoupling(torch.tensor([1.0, 0.0]), hidden_dims=(8,), input_bound=3.0)
    torch.nn.init.normal_(layer.net[-1].weight)
    far = torch.tensor([[50.0, 0.0], [5e6, 0.0]], dtype=torch.float32)
    s, t = layer._scale_shift(layer._split(far)[0])
    assert torch.equal(s[0], s[1])  # both inputs read as 3.0
    assert torch.equal(t[0], t[1])
    near = torch.tensor([[1.5, 0.0]])
    unbounded = MaskedAffineCoupling(torch.tensor([1.0, 0.0]), hidden_dims=(8,))
    unbounded.net.load_state_dict(layer.net.state_dict())
    assert torch.equal(layer(near), unbounded(near))  # the identity within the bound
    x = torch.randn(6, 2) * 10
    assert torch.allclose(layer.inv(layer(x).clone()), x, atol=1e-4)


@pytest.mark.parametrize("bound", [0.0, -1.0, float("nan")])
def test_a_non_positive_input_bound_is_refused(bound):
    with pytest.raises(ValueError, match="input_bound must be positive"):
        MaskedAffineCoupling(torch.tensor([1.0, 0.0]), input_bound=bound)


@pytest.mark.parametrize(
    ("mask", "dim", "message"),
    [
        (torch.tensor([1.0, 0.5]), None, "binary"),
        (torch.ones(2, 2), None, "one-dimensional"),
        (torch.tensor([1.0, 0.0, 1.0]), 4, r"shape \(4,\)"),
        (torch.ones(3), None, "identity"),
    ],
    ids=["non-binary", "2-d", "wrong-length", "all-ones"],
)
def test_check_mask_rejects_bad_masks(mask, dim, message):
    with pytest.raises(ValueError, match=message):
        check_mask(mask, dim)


def test_check_mask_accepts_integer_and_bool():
    assert check_mask(torch.tensor([True, False])).dtype == torch.get_default_dtype()
    assert check_mask(torch.tensor([0, 1])).tolist() == [0.0, 1.0]


BAD_NUMBERS = {
    "scale_bound-inf": ({"scale_bound": math.inf}, ValueError, "scale_bound must be .* finite"),
    "scale_bound-nan": ({"scale_bound": math.nan}, ValueError, "scale_bound must be .* finite"),
    "scale_bound-str": ({"scale_bound": "5"}, TypeError, "scale_bound must be .* finite"),
    "output_gain-zero": ({"output_gain": 0.0}, ValueError, r"output_gain must be .*never leaves"),
    "output_gain-negative": ({"output_gain": -0.1}, ValueError, "output_gain must be positive"),
    "output_gain-nan": ({"output_gain": math.nan}, ValueError, "output_gain must be positive"),
    "output_gain-inf": ({"output_gain": math.inf}, ValueError, "output_gain must be positive"),
    "output_gain-bool": ({"output_gain": True}, TypeError, "output_gain must be positive"),
    "input_bound-str": ({"input_bound": "inf"}, TypeError, "input_bound must be positive"),
}  # fmt: skip


@pytest.mark.parametrize(("kwargs", "error", "message"), BAD_NUMBERS.values(), ids=BAD_NUMBERS)
def test_a_bad_number_is_named_by_the_layer(kwargs, error, message):
    with pytest.raises(error, match=message):
        MaskedAffineCoupling(torch.tensor([1.0, 0.0]), **kwargs)


def test_numpy_numbers_and_an_infinite_input_bound_are_accepted():
    layer = MaskedAffineCoupling(
        torch.tensor([1.0, 0.0]), scale_bound=np.float32(3.0), output_gain=np.float64(0.5)
    )
    assert (layer.scale_bound, layer.output_gain, layer.input_bound) == (3.0, 0.5, math.inf)


def test_an_empty_mask_is_refused():
    with pytest.raises(ValueError, match="mask is empty"):
        MaskedAffineCoupling(torch.zeros(0))
    with pytest.raises(ValueError, match="input_dim must be an integer >= 1"):
        masked_affine_coupling(0)
    with pytest.raises(ValueError, match="parity must be 0 or 1"):
        masked_affine_coupling(4, parity=2)


@pytest.mark.parametrize(
    "activation", ["relu", nn.ELU(), torch.tanh, int], ids=["str", "instance", "function", "class"]
)
def test_an_activation_that_makes_no_module_is_refused(activation):
    with pytest.raises(TypeError, match="activation must be a torch.nn.Module class"):
        MaskedAffineCoupling(torch.tensor([1.0, 0.0]), (4,), activation=activation)


def test_a_factory_of_activations_is_accepted():
    layer = MaskedAffineCoupling(
        torch.tensor([1.0, 0.0]), (4,), activation=functools.partial(nn.LeakyReLU, 0.2)
    )
    assert isinstance(layer.net[1], nn.LeakyReLU)
    assert layer.net[1].negative_slope == 0.2


WRONG_INPUTS = {
    "float64": (torch.zeros(3, 2, dtype=torch.float64), r"dtype float64.*x\.float\(\).*double"),
    "integer": (torch.zeros(3, 2, dtype=torch.long), r"floating-point input.*x\.float\(\)"),
    "numpy": (np.zeros((3, 2), dtype=np.float32), r"torch\.Tensor.*torch\.as_tensor"),
}


CALLS = {
    "forward": lambda layer, x: layer(x),
    "inverse": lambda layer, x: layer.inv(x),
    "log-det": lambda layer, x: layer.log_abs_det_jacobian(x, x),
}


@pytest.mark.parametrize(("x", "message"), WRONG_INPUTS.values(), ids=WRONG_INPUTS)
@pytest.mark.parametrize("call", CALLS.values(), ids=CALLS)
def test_an_input_of_another_type_or_dtype_is_named_with_the_fix(call, x, message):
    with pytest.raises(TypeError, match=message):
        call(masked_affine_coupling(2, (4,)), x)


def test_a_low_precision_input_passes_under_autocast():
    layer = randomize_(masked_affine_coupling(2, (4,)))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(torch.randn(3, 2, dtype=torch.bfloat16))
    assert y.shape == (3, 2)

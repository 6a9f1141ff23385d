import warnings

import pytest
import torch

from pyro_realnvp.flows.conditioner import ScaledLinear, conditioner, mlp_call, soft_clamp


def test_soft_clamp_is_bounded_and_identity_near_zero():
    s = torch.linspace(-1e4, 1e4, 1001)
    assert soft_clamp(s, 3.0).abs().max() <= 3.0
    small = torch.linspace(-1e-3, 1e-3, 11)
    assert torch.allclose(soft_clamp(small, 3.0), small, atol=1e-9)


def test_soft_clamp_keeps_exp_finite():
    assert torch.isfinite(torch.exp(soft_clamp(torch.tensor(1e30), 5.0)))


def test_conditioner_starts_at_zero_but_last_layer_gets_gradients():
    net = conditioner(4, 8, (16, 16))
    out = net(torch.randn(5, 4))
    assert torch.equal(out, torch.zeros(5, 8))
    out.pow(2).add(out).sum().backward()
    assert net[-1].bias.grad.abs().sum() > 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_conditioner_honours_dtype(dtype):
    net = conditioner(3, 6, (8,), dtype=dtype)
    assert {p.dtype for p in net.parameters()} == {dtype}


def test_scaled_linear_applies_the_stored_weight_over_root_fan_in():
    layer = ScaledLinear(81, 4)
    x = torch.randn(3, 81)
    expected = x @ (layer.weight / 9).T + layer.bias
    assert torch.allclose(layer(x), expected)
    # torch's initial function, so stored weights start within +-1 at any width
    assert (layer.effective_weight().abs() <= 81**-0.5).all()
    assert layer.weight.abs().max() <= 1.0


def adam_step_change(width: int, scaled: bool) -> float:
    torch.manual_seed(0)
    net = conditioner(width, 2, (width,), fan_in_scaling=scaled)
    x = torch.randn(64, width)
    optimizer = torch.optim.Adam(net.parameters(), lr=0.01)
    net(x).sum().backward()
    optimizer.step()
    return net(x).abs().max().item()  # it started at exactly zero


def test_one_adam_step_moves_a_scaled_wide_layer_root_width_times_less():
    plain, scaled = adam_step_change(512, False), adam_step_change(512, True)
    assert plain > 0.3  # a sizeable fraction of lr * width
    assert scaled < plain / 10  # sqrt(512) = 22.6


@pytest.mark.parametrize("fan_in_scaling", [False, True], ids=["linear", "scaled"])
@pytest.mark.parametrize("batch", [(7,), (2, 3), ()], ids=["rows", "grid", "single"])
def test_mlp_call_is_the_network_and_detach_keeps_only_the_input_gradient(fan_in_scaling, batch):
    torch.manual_seed(0)
    net = conditioner(3, 4, (8, 8), fan_in_scaling=fan_in_scaling)
    torch.nn.init.normal_(net[-1].weight)
    x = torch.randn(*batch, 3, requires_grad=True)
    assert torch.allclose(mlp_call(net, x), net(x), atol=1e-6)
    out = mlp_call(net, x, detach=True)
    (grad_x,) = torch.autograd.grad(out.sum(), x)
    (expected,) = torch.autograd.grad(net(x).sum(), x)
    assert torch.allclose(grad_x, expected, atol=1e-6)
    out = mlp_call(net, x, detach=True)
    out.sum().backward()
    assert all(p.grad is None for p in net.parameters())


def test_a_conditioner_without_inputs_or_hidden_layers_builds_without_warnings():
    # A one-coordinate flow with hidden_dims=() has a last layer with no inputs: torch
    # warns about initialising its empty weight, which is noise here.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        net = conditioner(0, 2, hidden_dims=())
    assert net(torch.zeros(3, 0)).shape == (3, 2)


def test_a_layer_of_no_inputs_is_its_bias_and_every_parameter_gets_a_gradient():
    layer = ScaledLinear(0, 3)
    torch.nn.init.normal_(layer.bias)
    x = torch.zeros(5, 0)
    out = layer(x)
    assert torch.equal(out, layer.bias.expand(5, 3))
    out.sum().backward()
    assert layer.weight.grad.shape == (3, 0)
    assert torch.equal(layer.bias.grad, torch.full((3,), 5.0))

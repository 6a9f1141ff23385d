from functools import partial

import pyro.distributions as dist
import pytest
import torch
from helpers import no_host_sync, randomize_
from torch import nn

from pyro_realnvp import RealNVP
from pyro_realnvp.flows.conditioner import (
    conditioner,
    conditioner_vjp,
    recorded_call,
    supports_score,
    unscaled_vjp,
)

F64 = {"dtype": torch.float64}


@pytest.mark.parametrize(
    "activation",
    [nn.ELU, partial(nn.ELU, alpha=0.5), nn.ReLU, nn.Tanh, nn.LeakyReLU,
     partial(nn.LeakyReLU, 0.2), partial(nn.LeakyReLU, 0.0)],
    ids=["ELU", "ELU-alpha-0.5", "ReLU", "Tanh", "LeakyReLU", "LeakyReLU-0.2", "LeakyReLU-0"],
)  # fmt: skip
@pytest.mark.parametrize("fan_in_scaling", [False, True], ids=["Linear", "ScaledLinear"])
def test_conditioner_vjp_equals_autograd(activation, fan_in_scaling):
    net = conditioner(3, 4, (6, 5), activation=activation, fan_in_scaling=fan_in_scaling, **F64)
    randomize_(net, std=0.7)
    h = torch.randn(7, 3, **F64, requires_grad=True)
    cot = torch.randn(7, 4, **F64)
    tape = []
    out = recorded_call(net, h, tape)
    assert torch.equal(out, net(h))
    expected = 2.5 * torch.autograd.grad(out, h, cot)[0]
    assert torch.allclose(conditioner_vjp(net, tape, cot, 2.5), expected, rtol=1e-12)


def inverse_score(flow: RealNVP, y: torch.Tensor) -> torch.Tensor:
    """``grad_y log q(y)`` by autograd through the inverse pass, q = f_* N(0, I)."""
    y = y.detach().requires_grad_()
    x, log_det = flow.inverse_and_log_det(y)
    log_q = dist.Normal(0.0, 1.0).log_prob(x).sum(-1) - log_det
    return torch.autograd.grad(log_q.sum(), y)[0]


@pytest.mark.parametrize("num_layers", [2, 3, 5], ids=["pair", "odd", "pairs-and-one"])
@pytest.mark.parametrize("input_bound", [float("inf"), 0.5], ids=["unbounded", "bounded"])
def test_score_carried_forward_equals_autograd_through_the_inverse(num_layers, input_bound):
    torch.manual_seed(0)
    flow = RealNVP(5, num_layers, hidden_dims=(8, 8), fan_in_scaling=True,
                   input_bound=input_bound, **F64)  # fmt: skip
    randomize_(flow, std=0.5)
    x = 2.0 * torch.randn(64, 5, **F64)  # a bound of 0.5 clamps many of the inputs
    y, log_det, score = flow.forward_with_score(x, -x)
    expected_y, expected_log_det = flow.forward_and_log_det(x)
    assert torch.equal(y, expected_y)
    assert torch.equal(log_det, expected_log_det)
    assert not score.requires_grad
    assert torch.allclose(score, inverse_score(flow, y), rtol=1e-9, atol=1e-9)


def test_unknown_activations_custom_nets_and_hooks_are_not_supported():
    assert supports_score(conditioner(2, 4, (8,)))
    assert not supports_score(conditioner(2, 4, (8,), activation=nn.SiLU))
    assert not supports_score(nn.Sequential(nn.Linear(2, 4), nn.ELU(alpha=-1.0)))
    # A negative slope flips the sign: the output no longer tells where the input was.
    assert not supports_score(nn.Sequential(nn.Linear(2, 4), nn.LeakyReLU(-0.5)))
    assert supports_score(nn.Sequential(nn.Linear(2, 4), nn.LeakyReLU(0.2)))
    net = conditioner(2, 4, (8,))
    # recorded_call runs each layer's forward without the module call that runs hooks:
    # a net with any hook, forward or backward, goes the inverse pass's way instead.
    registrations = [
        "register_forward_hook",
        "register_forward_pre_hook",
        "register_full_backward_hook",
        "register_full_backward_pre_hook",
    ]
    for module in (net, net[0], net[1]):
        for register in registrations:
            handle = getattr(module, register)(lambda *_: None)
            assert not supports_score(net), (module, register)
            handle.remove()
            assert supports_score(net)
    module_hooks = nn.modules.module
    for register in [module_hooks.register_module_forward_hook,
                     module_hooks.register_module_forward_pre_hook,
                     module_hooks.register_module_full_backward_hook,
                     module_hooks.register_module_full_backward_pre_hook]:  # fmt: skip
        handle = register(lambda *_: None)
        try:
            assert not supports_score(net), register  # a hook on every module
        finally:
            handle.remove()
    assert supports_score(net)
    net[1] = nn.SiLU()  # a layer swapped after a first check is seen
    assert not supports_score(net)


def test_unscaled_vjp_leaves_only_the_gain_to_apply():
    net = conditioner(3, 4, (6,), fan_in_scaling=True, **F64)
    randomize_(net, std=0.7)
    tape = []
    recorded_call(net, torch.randn(5, 3, **F64), tape)
    cot = torch.randn(5, 4, **F64)
    v, gain = unscaled_vjp(net, tape, cot, 2.5)
    assert gain == pytest.approx(2.5 / (3**0.5 * 6**0.5))  # the layers' fan-in gains too
    assert torch.allclose(gain * v, conditioner_vjp(net, tape, cot, 2.5), rtol=1e-12)


@pytest.mark.parametrize("with_score", [False, True], ids=["forward", "with-score"])
def test_one_draw_runs_as_a_batch_of_one_with_the_same_values_and_gradients(with_score):
    torch.manual_seed(0)
    flow = RealNVP(5, 4, hidden_dims=(8, 8), fan_in_scaling=True, input_bound=1.0, **F64)
    randomize_(flow, std=0.5)
    x = torch.randn(5, **F64)

    def run(point):
        if with_score:
            return flow.forward_with_score(point, -point)
        return flow.forward_and_log_det(point)

    one, batch = run(x), run(x.unsqueeze(0))
    assert [t.shape for t in one] == [t.shape[1:] for t in batch]
    assert all(torch.allclose(a, b[0], rtol=1e-12) for a, b in zip(one, batch, strict=True))
    grads = [torch.autograd.grad(out[0].sum() + out[1].sum(), list(flow.parameters()))
             for out in (run(x), run(x.unsqueeze(0)))]  # fmt: skip
    for a, b in zip(*grads, strict=True):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-12)


def test_a_hook_that_changes_a_layer_falls_back_to_the_inverse_pass():
    torch.manual_seed(0)
    flow = RealNVP(4, 2, hidden_dims=(8,), **F64)
    randomize_(flow, std=0.5)
    flow.layers[0].net[1].register_forward_hook(lambda module, inputs, output: 2 * output)
    assert not flow.supports_score()
    x = torch.randn(16, 4, **F64)
    y, _ = flow.forward_and_log_det(x)
    assert torch.allclose(flow.inverse_and_log_det(y)[0], x)  # the hook acts on both passes


@pytest.mark.cuda
def test_cuda_score_carried_forward_waits_on_no_host_sync_and_equals_the_inverse_pass():
    torch.manual_seed(0)
    flow = RealNVP(5, 3, hidden_dims=(8, 8), fan_in_scaling=True, input_bound=1.0,
                   device="cuda", **F64)  # fmt: skip
    randomize_(flow, std=0.5)
    x = 2.0 * torch.randn(64, 5, device="cuda", **F64)
    with no_host_sync():
        y, log_det, score = flow.forward_with_score(x, -x)
    assert score.is_cuda
    assert log_det.is_cuda
    assert torch.allclose(score, inverse_score(flow, y), rtol=1e-9, atol=1e-9)

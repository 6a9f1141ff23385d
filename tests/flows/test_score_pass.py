"""The flow's carried-score pass as one autograd node: the same values and gradients as
the pass recorded by autograd, operation by operation."""

from functools import partial

import pyro
import pyro.distributions as dist
import pytest
import torch
from helpers import randomize_
from torch import nn

from pyro_realnvp import AutoRealNVP, MaskedAffineCoupling, RealNVP
from pyro_realnvp.flows import score_pass
from pyro_realnvp.flows.masks import alternating_mask

F64 = {"dtype": torch.float64}


def recorded(flow: RealNVP, x: torch.Tensor, score: torch.Tensor):
    """The pass under autograd, as it runs where the node does not apply."""
    if x.dim() == 1:
        return RealNVP._run(x, flow._groups, None, False, +1, score)
    flat = x.reshape(-1, x.shape[-1])
    y, log_det, out = RealNVP._run(flat, flow._groups, None, False, +1, score.reshape(flat.shape))
    return y.reshape(x.shape), log_det.reshape(x.shape[:-1]), out.reshape(x.shape)


def gradients(flow, pass_, x, cot_y, cot_log_det):
    y, log_det, score = pass_(x, -x.detach())
    loss = 0.0
    if cot_y is not None:
        loss = loss + (y * cot_y).sum()
    if cot_log_det is not None:
        loss = loss + (log_det * cot_log_det).sum()
    wrt = [t for t in (x, *flow.parameters()) if t.requires_grad]
    return (y, log_det, score), torch.autograd.grad(loss, wrt)


def node(flow: RealNVP, x: torch.Tensor, score: torch.Tensor):
    """The pass as one node: ``forward_with_score`` for one draw, else ``score_pass``."""
    if x.dim() == 1:
        return flow.forward_with_score(x, score)
    flat = x.reshape(-1, x.shape[-1])
    y, log_det, out = score_pass.score_pass(flow, flat, score.reshape(flat.shape))
    assert "ScorePass" in type(y.grad_fn).__name__
    return y.reshape(x.shape), log_det.reshape(x.shape[:-1]), out.reshape(x.shape)


def assert_same_pass(flow, x, cot_y, cot_log_det):
    assert score_pass.applies(x)
    fused, fused_grads = gradients(flow, partial(node, flow), x, cot_y, cot_log_det)
    expected, expected_grads = gradients(flow, partial(recorded, flow), x, cot_y, cot_log_det)
    for got, want in zip(fused, expected, strict=True):
        assert torch.equal(got, want)
    assert not fused[2].requires_grad
    for got, want in zip(fused_grads, expected_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize(
    "activation",
    [nn.ELU, partial(nn.ELU, alpha=0.5), nn.ReLU, nn.Tanh, partial(nn.LeakyReLU, 0.2)],
    ids=["ELU", "ELU-alpha-0.5", "ReLU", "Tanh", "LeakyReLU-0.2"],
)  # fmt: skip
@pytest.mark.parametrize("fan_in_scaling", [False, True], ids=["Linear", "ScaledLinear"])
@pytest.mark.parametrize("input_bound", [float("inf"), 0.5], ids=["unbounded", "bounded"])
def test_gradients_equal_autograds_through_the_recorded_pass(activation, fan_in_scaling,
                                                             input_bound):  # fmt: skip
    flow = RealNVP(5, 4, hidden_dims=(7, 6), activation=activation, input_bound=input_bound,
                   fan_in_scaling=fan_in_scaling, **F64)  # fmt: skip
    randomize_(flow, std=0.5)
    generator = torch.Generator().manual_seed(1)
    x = 2.0 * torch.randn(9, 5, generator=generator, **F64).requires_grad_()
    cot_y, cot_log_det = torch.randn(9, 5, **F64), torch.randn(9, **F64)
    assert_same_pass(flow, x, cot_y, cot_log_det)


@pytest.mark.parametrize(
    ("dim", "num_layers", "shape"),
    [(6, 6, ()), (6, 6, (4,)), (6, 6, (3, 2)), (5, 3, (4,)), (1, 2, (4,)), (2, 2, ())],
    ids=["one-draw", "batch", "two-batch-dims", "odd-layers", "one-coordinate", "pair"],
)
def test_shapes_odd_stacks_and_a_single_coordinate(dim, num_layers, shape):
    flow = RealNVP(dim, num_layers, hidden_dims=(8, 8), fan_in_scaling=True, input_bound=3.0,
                   **F64)  # fmt: skip
    randomize_(flow, std=0.5)
    x = torch.randn(*shape, dim, **F64, requires_grad=True)
    assert_same_pass(flow, x, torch.randn(*shape, dim, **F64), torch.randn(shape, **F64))


@pytest.mark.parametrize("used", ["y", "log_det"])
def test_an_output_left_out_of_the_loss(used):
    flow = randomize_(RealNVP(4, 4, hidden_dims=(8,), fan_in_scaling=True, **F64), std=0.5)
    x = torch.randn(6, 4, **F64, requires_grad=True)
    cot_y = torch.randn(6, 4, **F64) if used == "y" else None
    cot_log_det = torch.randn(6, **F64) if used == "log_det" else None
    assert_same_pass(flow, x, cot_y, cot_log_det)


def test_bias_free_layers_and_frozen_parameters():
    def net(kept: int, free: int) -> nn.Sequential:
        return nn.Sequential(nn.Linear(kept, 6, bias=False, **F64), nn.Tanh(),
                             nn.Linear(6, 2 * free, **F64))  # fmt: skip

    couplings = [MaskedAffineCoupling(alternating_mask(5, parity), net=net(3 - parity, 2 + parity),
                                      **F64) for parity in (0, 1)]  # fmt: skip
    flow = randomize_(RealNVP.from_couplings(couplings), std=0.5)
    flow.layers[1].net[2].weight.requires_grad_(False)
    x = torch.randn(6, 5, **F64)  # an input that needs no gradient
    assert_same_pass(flow, x, torch.randn(6, 5, **F64), torch.randn(6, **F64))


def test_second_derivatives_go_through_the_recorded_pass():
    flow = randomize_(RealNVP(4, 4, hidden_dims=(6,), fan_in_scaling=True, input_bound=1.0,
                              **F64), std=0.4)  # fmt: skip
    x = torch.randn(5, 4, **F64, requires_grad=True)
    wrt = [x, *flow.parameters()]
    results = []
    for pass_ in (partial(node, flow), partial(recorded, flow)):
        y, log_det, _ = pass_(x, -x.detach())
        grads = torch.autograd.grad(y.sin().sum() + log_det.pow(2).sum(), wrt, create_graph=True)
        results.append(torch.autograd.grad(sum(g.pow(2).sum() for g in grads), wrt))
    for got, want in zip(*results, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_a_parameter_changed_before_the_backward_pass_is_refused():
    flow = RealNVP(4, 2, hidden_dims=(6,), fan_in_scaling=True)
    x = torch.randn(3, 4)
    y, _, _ = node(flow, x, -x)
    with torch.no_grad():
        flow.layers[0].net[0].weight.add_(1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.sum().backward()


def test_one_draw_goes_through_the_node_and_a_batch_through_the_recorded_pass():
    flow = RealNVP(3, 2, hidden_dims=(4,), fan_in_scaling=True)
    one, batch = torch.randn(3), torch.randn(5, 3)
    [(node, _)] = flow.forward_with_score(one, -one)[0].grad_fn.next_functions
    assert "ScorePass" in type(node).__name__
    assert "ScorePass" not in str(flow.forward_with_score(batch, -batch)[0].grad_fn)


def test_where_the_pass_must_be_recorded_it_is():
    x = torch.randn(3, 2)
    assert score_pass.applies(x)
    with torch.no_grad():
        assert not score_pass.applies(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not score_pass.applies(x)
    inside = torch.vmap(lambda row: torch.tensor(score_pass.applies(row)))(x)
    assert not inside.any()
    seen = []

    def probe(x: torch.Tensor) -> torch.Tensor:
        seen.append(score_pass.applies(x))
        return 2 * x

    torch.jit.trace(probe, x, check_trace=False)  # Pyro's JIT ELBOs trace the pass
    assert seen == [False]


def test_a_step_of_pyros_loop_is_the_same_either_way(monkeypatch):
    def model():
        a = pyro.sample("a", dist.Normal(torch.zeros(3, **F64), 1.0).to_event(1))
        pyro.sample("b", dist.Normal(a.sum(), 0.5), obs=torch.tensor(1.0, **F64))

    grads = []
    for applies in (score_pass.applies, lambda x: False):
        monkeypatch.setattr(score_pass, "applies", applies)
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        guide = AutoRealNVP(model)
        guide()
        randomize_(guide.flow, std=0.3)
        loss = pyro.infer.Trace_ELBO().differentiable_loss(model, guide)
        grads.append(torch.autograd.grad(loss, list(guide.parameters())))
    for got, want in zip(*grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)

"""Steps on Pyro's ELBO: ``fit``'s schedule as one fused Adam (``ScheduledSVIStep``)."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Trace_ELBO
from pyro.infer.autoguide import AutoNormal

from pyro_realnvp import AutoRealNVP, NonFiniteLossError
from pyro_realnvp.infer.loop import Schedule, clip_total_norm, train
from pyro_realnvp.infer.svi_step import ScheduledSVIStep

SCHEDULE = Schedule(lr=0.05, lr_decay=0.1, clip_norm=0.5, num_steps=10)


def model(data):
    loc = pyro.sample("loc", dist.Normal(0.0, 10.0))
    scale = pyro.sample("scale", dist.LogNormal(0.0, 1.0))
    with pyro.plate("rows", len(data)):
        pyro.sample("obs", dist.Normal(loc, scale), obs=data)


DATA = torch.tensor([3.0, 4.0, 2.5, 3.5])


def test_a_step_is_clip_then_torch_adam_with_its_decay_over_every_parameter():
    pyro.clear_param_store()
    guide = AutoNormal(model)
    pyro.set_rng_seed(1)
    guide(DATA)  # set up, so that both sides start from the same parameters
    step = ScheduledSVIStep(model, guide, Trace_ELBO(), SCHEDULE, (DATA,), {})
    params = [p for _, p in sorted(pyro.get_param_store().named_parameters())]
    mirror = [p.detach().clone().requires_grad_(True) for p in params]
    optimizer, decay = SCHEDULE.torch_optimizer(mirror)
    for seed in range(4):
        pyro.set_rng_seed(seed)
        step()
        pyro.set_rng_seed(seed)
        with torch.no_grad():  # the same draw's gradients, at the mirror's values
            for param, copy in zip(params, mirror, strict=True):
                saved, param.data = param.data, copy.detach().clone()
                copy._saved = saved
        loss = Trace_ELBO().differentiable_loss(model, guide, DATA)
        grads = torch.autograd.grad(loss, params)
        for param, copy, grad in zip(params, mirror, grads, strict=True):
            param.data, copy.grad = copy._saved, grad
        clip_total_norm(mirror, SCHEDULE.clip_norm)
        optimizer.step()
        decay.step()
    for param, copy in zip(params, mirror, strict=True):
        torch.testing.assert_close(param.detach(), copy.detach())
    assert step.decay.get_last_lr()[0] == pytest.approx(0.05 * 0.1 ** (4 / 10))
    assert len(step.optimizer.param_groups) == 1
    assert all(p.grad is None for p in params)  # cleared, as Pyro's loop leaves them zero


def test_a_parameter_met_later_joins_at_the_decayed_lr():
    pyro.clear_param_store()
    calls = []

    def guide(data):
        calls.append(1)
        pyro.sample("loc", dist.Normal(pyro.param("loc_q", torch.tensor(0.0)), 1.0))
        scale_loc = pyro.param("late", torch.tensor(0.0)) if len(calls) > 2 else 0.0
        pyro.sample("scale", dist.LogNormal(scale_loc, 0.1))

    step = ScheduledSVIStep(model, guide, Trace_ELBO(), SCHEDULE, (DATA,), {})
    train(step, 4, progress=False)
    groups = step.optimizer.param_groups
    assert len(groups) == 2
    # It joined at the 3rd step at 0.05 * 0.1^(2/10), and decayed with the others since.
    assert groups[0]["lr"] == groups[1]["lr"] == pytest.approx(0.05 * 0.1 ** (4 / 10))
    assert pyro.param("late").item() != 0.0


def test_a_huge_but_finite_gradient_is_clipped_not_refused():
    # Entries past 1e19 overflow a float32 total norm: the step checks the entries then.
    def steep():
        x = pyro.sample("x", dist.Normal(0.0, 1.0))
        pyro.factor("wall", 1e20 * x)

    pyro.clear_param_store()
    guide = AutoNormal(steep)
    step = ScheduledSVIStep(steep, guide, Trace_ELBO(), SCHEDULE, (), {})
    assert math.isfinite(step())
    assert all(torch.isfinite(p).all() for _, p in pyro.get_param_store().named_parameters())


def test_a_non_finite_gradient_raises_and_updates_nothing():
    state = {"poison": False}

    def poisonable(data):
        loc = pyro.sample("loc", dist.Normal(0.0, 10.0))
        if state["poison"]:  # a loss of 0 whose gradient is 0 * nan
            pyro.factor("nan_gradient", torch.where(torch.tensor(True), 0.0 * loc,
                                                    torch.sqrt(-loc.abs() - 1.0)))  # fmt: skip
        pyro.sample("obs", dist.Normal(loc, 1.0).expand([len(data)]).to_event(1), obs=data)

    pyro.clear_param_store()
    guide = AutoRealNVP(poisonable, num_layers=2)
    step = ScheduledSVIStep(poisonable, guide, Trace_ELBO(), SCHEDULE, (DATA,), {})
    step()
    before = {name: p.detach().clone() for name, p in guide.named_parameters()}
    state["poison"] = True
    with pytest.raises(NonFiniteLossError, match="gradients not"):
        step()
    for name, param in guide.named_parameters():
        assert torch.equal(param.detach(), before[name]), name
        assert param.grad is None or not param.grad.abs().sum(), name
    state["poison"] = False
    assert math.isfinite(step())


def test_a_guide_without_parameters_steps_without_an_optimizer():
    def fixed(data):
        pyro.sample("loc", dist.Normal(3.0, 1.0))
        pyro.sample("scale", dist.LogNormal(0.0, 0.1))

    step = ScheduledSVIStep(model, fixed, Trace_ELBO(), SCHEDULE, (DATA,), {})
    assert math.isfinite(step())
    assert step.optimizer is None

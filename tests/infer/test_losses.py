import math

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_realnvp import AutoRealNVP, FastELBO, fit
from pyro_realnvp.infer.fast import FastStep
from pyro_realnvp.infer.losses import (
    LATE_TAIL_GAIN,
    check_beta,
    particle_objective,
    tail_adaptive_weights,
    tail_schedule,
)
from pyro_realnvp.infer.svi import fit_step


def test_tail_adaptive_weights_rank_the_importance_weights():
    log_w = torch.tensor([0.3, -2.0, 5.0, 1.0], dtype=torch.float64)
    rho = tail_adaptive_weights(log_w, beta=-1.0)
    assert rho.sum().item() == pytest.approx(1.0)
    # Largest weight first: ranks 3, 4, 1, 2, so rho is proportional to 4 / rank.
    expected = torch.tensor([4 / 3, 1.0, 4.0, 2.0], dtype=torch.float64)
    assert torch.allclose(rho, expected / expected.sum())
    # Only ranks count: a shift or a monotone squash of log w changes nothing.
    assert torch.equal(tail_adaptive_weights(torch.tanh(log_w) + 7.0, -1.0), rho)
    assert torch.allclose(
        tail_adaptive_weights(log_w, 0.0), torch.full((4,), 0.25, dtype=torch.float64)
    )


def test_tail_adaptive_weights_are_bounded_however_heavy_the_tail():
    log_w = torch.tensor([0.0, 0.0, 0.0, 1e30])
    rho = tail_adaptive_weights(log_w, beta=-1.0)
    assert rho.max() / rho.min() <= 4.0 + 1e-6  # N^{-beta}
    assert torch.isfinite(rho).all()


@pytest.mark.parametrize("beta", [None, -1.0, -0.5])
def test_particle_objective_is_the_mean_with_rank_weighted_gradients(beta):
    generator = torch.Generator().manual_seed(0)
    leaf = torch.randn(6, dtype=torch.float64, generator=generator, requires_grad=True)
    diff = leaf**3  # a nonlinear function, so the weights are not the gradient's
    loss = particle_objective(diff, beta)
    assert loss.item() == pytest.approx(diff.mean().item())
    (grad,) = torch.autograd.grad(loss, leaf)
    rho = torch.full((6,), 1 / 6, dtype=torch.float64)
    if beta is not None:
        rho = tail_adaptive_weights(-diff.detach(), beta)
    assert torch.allclose(grad, rho * 3 * leaf.detach() ** 2)


def test_one_particle_weighs_one():
    diff = torch.tensor([2.0], requires_grad=True)
    particle_objective(diff, -1.0).backward()
    assert diff.grad.tolist() == [1.0]


def banana_like():
    x1 = pyro.sample("x1", dist.Normal(0.0, 3.0))
    pyro.sample("x2", dist.Normal(0.3 * x1**2, 1.0))


def test_fast_elbo_with_beta_reports_the_same_loss_and_moves_differently():
    pyro.set_rng_seed(0)
    guide = AutoRealNVP(banana_like, num_layers=2, hidden_dims=(8,))
    plain = FastELBO(banana_like, guide, num_particles=16)
    tail = FastELBO(banana_like, guide, num_particles=16, beta=-1.0)
    eps = plain.sample_noise()
    losses = [elbo.loss(eps) for elbo in (plain, tail)]
    assert losses[0].item() == pytest.approx(losses[1].item(), rel=1e-6)
    params = plain.parameters()
    grads = [
        torch.cat([g.flatten() for g in torch.autograd.grad(loss, params)]) for loss in losses
    ]
    assert not torch.allclose(grads[0], grads[1])


def test_tail_weights_make_fit_cover_a_heavy_tail():
    # Student-t with 3 degrees of freedom, sd sqrt(3): reverse KL keeps q narrow (1.25-1.27
    # over seeds 0-2), the tail-adaptive weights widen it (1.49-1.53).
    def model():
        pyro.sample("x", dist.StudentT(3.0, 0.0, 1.0).expand([2]).to_event(1))

    sds = []
    for beta in (None, -1.0):
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        guide = AutoRealNVP(model, num_layers=2, hidden_dims=(8,))
        fit(model, guide, num_steps=500, progress=False, tail_beta=beta)
        with torch.no_grad():
            sds.append(guide.get_posterior().sample((20000,)).std(0).mean().item())
    assert sds[1] > 1.1 * sds[0]
    assert sds[1] < math.sqrt(3.0)


@pytest.mark.parametrize("beta", [float("nan"), math.inf, True, "-1"])
def test_a_bad_beta_is_refused_naming_it(beta):
    error = TypeError if isinstance(beta, (bool, str)) else ValueError  # not a number at all
    with pytest.raises(error, match="tail_beta"):
        check_beta(beta, "tail_beta")
    guide = AutoRealNVP(banana_like, num_layers=2, hidden_dims=(8,))
    with pytest.raises(error, match="tail_beta"):
        fit(banana_like, guide, num_steps=1, progress=False, tail_beta=beta)
    with pytest.raises(error, match="beta"):
        FastELBO(banana_like, guide, beta=beta)


@pytest.mark.parametrize(
    ("fraction", "expected"),
    [(1.0, {0: -1.0, 20: -1.4}), (0.9, {0: -1.0, 20: -1.4, 27: None}),
     (0.5, {0: -1.0, 15: None}), (0.05, {0: -1.0, 2: None}), (0.0, {0: None})],
)  # fmt: skip
def test_tail_schedule_weighs_a_first_fraction_and_strengthens_the_last_third(fraction, expected):
    assert tail_schedule(-1.0, 30, fraction=fraction) == expected
    assert tail_schedule(None, 30, fraction=fraction) == {0: None}


def test_tail_schedule_takes_a_late_exponent_given_or_none():
    assert tail_schedule(-0.5, 30) == {0: -0.5, 20: -0.5 * LATE_TAIL_GAIN}
    assert tail_schedule(-1.0, 30, late_beta=-2.0) == {0: -1.0, 20: -2.0}
    assert tail_schedule(-1.0, 30, late_beta=None) == {0: -1.0}
    assert tail_schedule(-1.0, 1) == {0: -1.0}  # no step is left for a late phase


def test_fit_step_hands_the_fast_step_its_late_exponent():
    guide = AutoRealNVP(banana_like, num_layers=2, hidden_dims=(8,))
    step, _ = fit_step(banana_like, guide, num_steps=30, average=None)
    assert isinstance(step, FastStep)
    assert step.elbo.beta == -1.0
    assert step.beta_changes == {20: -1.0 * LATE_TAIL_GAIN}
    step, _ = fit_step(banana_like, guide, num_steps=30, average=None, late_tail_beta=None)
    assert step.beta_changes == {}


@pytest.mark.parametrize(("late", "error"), [("late", TypeError), (float("nan"), ValueError)])
def test_a_bad_late_tail_beta_is_refused_naming_it(late, error):
    guide = AutoRealNVP(banana_like, num_layers=2, hidden_dims=(8,))
    with pytest.raises(error, match="late_tail_beta"):
        fit(banana_like, guide, num_steps=1, progress=False, late_tail_beta=late)


@pytest.mark.parametrize("fraction", [1.5, -0.1, float("nan"), True, "half"])
def test_a_bad_tail_fraction_is_refused_naming_it(fraction):
    guide = AutoRealNVP(banana_like, num_layers=2, hidden_dims=(8,))
    error = TypeError if isinstance(fraction, (bool, str)) else ValueError
    with pytest.raises(error, match="tail_fraction must be a number in"):
        fit(banana_like, guide, num_steps=1, progress=False, tail_fraction=fraction)

"""The guide's posterior: the path gradient by the inverse pass and by the carried score,
against detached copies and the total gradient."""

from functools import partial

import pyro
import pyro.distributions as dist
import pytest
import torch
from helpers import randomize_
from pyro.distributions.transforms import LowerCholeskyAffine
from pyro.infer import JitTrace_ELBO, Trace_ELBO

from pyro_realnvp import AutoRealNVP, RealNVP


def gaussian_target():
    """One correlated Gaussian site: the Laplace start is the exact posterior (float64)."""
    loc = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    cov = torch.tensor([[1.0, 0.6, 0.2], [0.6, 2.0, 0.3], [0.2, 0.3, 0.5]], dtype=torch.float64)

    def model():
        pyro.sample("z", dist.MultivariateNormal(loc, cov))

    return model


def guide_gradients(guide, loss_fn) -> torch.Tensor:
    params = [p for p in guide.parameters()]
    for p in params:
        p.grad = None
    loss_fn().backward()
    return torch.cat([p.grad.reshape(-1) for p in params if p.grad is not None])


@pytest.mark.parametrize("particles", [1, 8], ids=["one", "vectorized"])
def test_path_and_total_estimators_give_the_same_loss(particles):
    model = gaussian_target()
    values = []
    for estimator in ("path", "total"):
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        guide = AutoRealNVP(model, num_layers=2, estimator=estimator)
        guide()
        randomized(guide.flow)
        pyro.set_rng_seed(1)
        elbo = Trace_ELBO(num_particles=particles, vectorize_particles=particles > 1)
        values.append(elbo.loss(model, guide))
    assert values[0] == pytest.approx(values[1], rel=1e-12)


def randomized(module):
    from helpers import randomize_

    return randomize_(module, std=0.2)


def frozen_copy(guide):
    """q with copies of the guide's parameters: nothing computed with it reaches them."""
    flow = RealNVP(3, num_layers=4, hidden_dims=(8,), fan_in_scaling=True, dtype=torch.float64)
    flow.load_state_dict(guide.flow.state_dict())
    scale_tril = (guide.scale[:, None] * guide.scale_tril).detach().clone()
    affine = LowerCholeskyAffine(guide.loc.detach().clone(), scale_tril)
    return dist.TransformedDistribution(guide.get_base_dist(), [flow, affine])


def guide_away_from_the_target_and_a_frozen_copy():
    guide = AutoRealNVP(gaussian_target(), num_layers=4, hidden_dims=(8,))
    guide()
    randomized(guide.flow)
    return guide, frozen_copy(guide)


def test_path_gradient_equals_a_computation_with_detached_copies():
    guide, frozen = guide_away_from_the_target_and_a_frozen_copy()
    eps = torch.randn(16, 3, dtype=torch.float64)
    target = dist.MultivariateNormal(
        torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64),
        torch.tensor([[1.0, 0.6, 0.2], [0.6, 2.0, 0.3], [0.2, 0.3, 0.5]], dtype=torch.float64),
    )

    def path_loss():
        u = guide.get_transform()(eps.clone())
        return (guide.log_density_detached(u) - target.log_prob(u)).mean()

    def independent_loss():
        u = guide.get_transform()(eps.clone())
        return (frozen.log_prob(u.clone()) - target.log_prob(u)).mean()

    path, independent = guide_gradients(guide, path_loss), guide_gradients(guide, independent_loss)
    assert path.abs().max() > 1e-3  # not trivially zero: the flow is away from the target
    assert torch.allclose(path, independent, rtol=1e-9, atol=1e-12)


def test_the_posterior_scores_its_own_draw_with_the_carried_score_not_an_inverse_pass():
    guide, frozen = guide_away_from_the_target_and_a_frozen_copy()
    target = dist.MultivariateNormal(
        torch.zeros(3, dtype=torch.float64), 2 * torch.eye(3).double()
    )
    inverse_passes = []
    backward = guide.flow.inverse_and_log_det
    guide.flow.inverse_and_log_det = lambda *a, **k: inverse_passes.append(1) or backward(*a, **k)

    def posterior_loss():
        pyro.set_rng_seed(0)
        posterior = guide.get_posterior()
        u = posterior.rsample((16,))
        return (posterior.log_prob(u) - target.log_prob(u)).mean()

    def independent_loss():
        pyro.set_rng_seed(0)
        u = guide.get_transform()(guide.get_base_dist().rsample((16,)))
        return (frozen.log_prob(u.clone()) - target.log_prob(u)).mean()

    path = guide_gradients(guide, posterior_loss)
    assert not inverse_passes
    independent = guide_gradients(guide, independent_loss)
    assert path.abs().max() > 1e-3
    assert torch.allclose(path, independent, rtol=1e-9, atol=1e-12)
    posterior = guide.get_posterior()
    with torch.no_grad():  # Predictive's case: the value alone, from the draw
        u = posterior.rsample((5,))
        assert torch.allclose(posterior.log_prob(u), frozen.log_prob(u.clone()))
    assert not inverse_passes
    assert torch.allclose(posterior.log_prob(u.clone()), frozen.log_prob(u))  # another tensor
    assert inverse_passes
    u = posterior.rsample((5,))
    with torch.no_grad():
        assert not posterior.log_prob(u).requires_grad  # a constant, as the inverse gives
        u.add_(1.0)  # a draw changed in place is scored as what it now is
    assert torch.allclose(posterior.log_prob(u), frozen.log_prob(u.clone()))


@pytest.mark.parametrize(
    "make_elbo",
    [Trace_ELBO, partial(Trace_ELBO, num_particles=4, vectorize_particles=True), JitTrace_ELBO],
    ids=["one-draw", "vectorized", "jit"],
)
@pytest.mark.filterwarnings(
    "ignore:`torch.jit.trace` is deprecated", "ignore::torch.jit.TracerWarning"
)
def test_path_gradient_is_zero_for_every_draw_at_the_exact_posterior(make_elbo):
    model = gaussian_target()
    for estimator, expect_zero in (("path", True), ("total", False)):
        elbo = make_elbo()
        pyro.clear_param_store()
        guide = AutoRealNVP(model, num_layers=2, estimator=estimator)
        guide()  # the Laplace start: exactly the posterior, flow at the identity
        for seed in range(3):
            pyro.set_rng_seed(seed)
            grads = guide_gradients(guide, partial(elbo.differentiable_loss, model, guide))
            assert (grads.abs().max() < 1e-6) == expect_zero, (estimator, seed)


F64 = {"dtype": torch.float64}


def model():
    pyro.sample("a", dist.Normal(torch.zeros(2, **F64), 1.0).to_event(1))
    pyro.sample("b", dist.LogNormal(torch.zeros((), **F64), 1.0))


def path_gradients(guide, eps):
    params = [p for p in guide.parameters() if p.requires_grad]
    for param in params:
        param.grad = None
    u, log_q = guide.path_draw(eps)
    (log_q - dist.Normal(0.0, 2.0).log_prob(u).sum(-1)).sum().backward()
    return log_q.detach(), [param.grad.clone() for param in params]


@pytest.mark.parametrize("affine", ["lower", "diagonal"])
def test_path_draw_gives_the_inverse_pass_value_and_gradient(affine):
    pyro.clear_param_store()
    guide = AutoRealNVP(model, num_layers=4, hidden_dims=(8,), affine=affine)
    guide()
    randomize_(guide, std=0.3)
    eps = torch.randn(16, 3, **F64)
    fast, fast_grads = path_gradients(guide, eps)
    assert guide.flow.supports_score()
    guide.flow.layers[1].net.register_forward_hook(lambda *_: None)
    assert not guide.flow.supports_score()  # the inverse pass instead
    slow, slow_grads = path_gradients(guide, eps)
    assert torch.allclose(fast, slow, rtol=1e-10)
    for a, b in zip(fast_grads, slow_grads, strict=True):
        assert torch.allclose(a, b, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("dense", [True, False], ids=["lower", "diagonal"])
def test_the_inverse_log_density_is_the_transformed_distributions(dense):
    from helpers import randomize_

    from pyro_realnvp.flows import RealNVP
    from pyro_realnvp.guide.posterior import affine_transform, inverse_log_density

    flow = randomize_(RealNVP(4, num_layers=4, hidden_dims=(16,), dtype=torch.float64), 0.3)
    generator = torch.Generator().manual_seed(1)
    loc, scale = (
        torch.randn(4, generator=generator, dtype=torch.float64),
        torch.rand(4, dtype=torch.float64) + 0.5,
    )
    unit = (
        torch.eye(4, dtype=torch.float64)
        + torch.tril(torch.randn(4, 4, generator=generator, dtype=torch.float64), -1)
        if dense
        else None
    )
    affine = affine_transform(loc, scale, unit)
    base = dist.Normal(torch.zeros(4, dtype=torch.float64), 1.0).to_event(1)
    q = dist.TransformedDistribution(base, [flow, affine])
    u = q.sample((7,))
    assert torch.allclose(inverse_log_density(flow, affine, u.clone()), q.log_prob(u.clone()))


def test_the_total_gradient_draw_differentiates_log_q_through_the_flows_parameters_too():
    from pyro_realnvp.flows import RealNVP
    from pyro_realnvp.guide.posterior import (
        affine_transform,
        inverse_log_density,
        path_gradient_draw,
        total_gradient_draw,
    )

    flow = RealNVP(2, num_layers=2, hidden_dims=(8,), dtype=torch.float64)
    affine = affine_transform(
        torch.zeros(2, dtype=torch.float64), torch.ones(2, dtype=torch.float64)
    )
    base = dist.Normal(torch.zeros(2, dtype=torch.float64), 1.0).to_event(1)
    eps = torch.randn(5, 2, dtype=torch.float64)
    _, log_q_total = total_gradient_draw(flow, affine, base, eps)
    detached = affine_transform(affine.loc, affine.scale, detach=True)
    _, log_q_path = path_gradient_draw(
        flow, affine, eps, lambda u: inverse_log_density(flow, detached, u)
    )
    assert torch.allclose(log_q_total, log_q_path)  # the same value
    last = flow.layers[0].net[-1].bias
    (total,) = torch.autograd.grad(log_q_total.sum(), last, retain_graph=True)
    assert total.abs().sum() > 0  # log q's score-function part reaches the parameters

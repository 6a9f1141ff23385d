"""The Laplace start: mode search, Hessian, covariance factor, and the choice of start."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from helpers import quadratic, spd, two_wells

from pyro_realnvp import AutoRealNVP
from pyro_realnvp.guide import laplace
from pyro_realnvp.guide.laplace import (
    batched_potential,
    best_mode,
    covariance_factor,
    find_mode,
    gaussian_elbo,
    hessian,
    laplace_start,
)
from pyro_realnvp.guide.potential import Potential


def test_the_start_is_at_the_deepest_mode_found_not_the_nearest():
    init = torch.tensor([-0.6])
    nearest, _ = find_mode(two_wells, init)
    torch.testing.assert_close(nearest, torch.tensor([-1.0]), atol=1e-2, rtol=0)
    start = laplace_start(two_wells, init)
    assert start.kind == "laplace"
    torch.testing.assert_close(start.loc, torch.tensor([1.0]), atol=1e-2, rtol=0)


def _restarts_recorded(monkeypatch):
    """The calls of the restarts (``deeper_mode``), recorded as they run."""
    calls = []
    original = laplace.deeper_mode
    monkeypatch.setattr(
        laplace, "deeper_mode", lambda *a, **k: calls.append(a) or original(*a, **k)
    )
    return calls


def _no_restarts_pay(monkeypatch):
    """A model too large for the restarts to pay whatever its start; their calls, recorded."""
    monkeypatch.setattr(laplace, "restarts_pay", lambda *a: False)
    return _restarts_recorded(monkeypatch)


def test_a_large_models_already_good_first_gaussian_skips_the_restarts(monkeypatch):
    calls = _no_restarts_pay(monkeypatch)
    precision, mode = spd(4), torch.randn(4, dtype=torch.float64)
    start = laplace_start(quadratic(precision, mode), torch.zeros(4, dtype=torch.float64))
    assert calls == []
    assert start.kind == "laplace"
    torch.testing.assert_close(start.loc, mode, atol=1e-6, rtol=0)
    # The price, where the first mode's draws cannot see another: its shallow well kept.
    start = laplace_start(far_wells, torch.tensor([-1.6]))
    assert calls == []
    torch.testing.assert_close(start.loc, torch.tensor([-2.0]), atol=1e-3, rtol=0)
    monkeypatch.undo()
    start = laplace_start(far_wells, torch.tensor([-1.6]))
    torch.testing.assert_close(start.loc, torch.tensor([2.0]), atol=1e-3, rtol=0)


def far_wells(u):
    """A shallow well at u = -2 (weight 0.3), the deep one at u = +2, 8 sd apart."""
    wells = torch.stack([-2 * (u + 2) ** 2 + math.log(0.3), -2 * (u - 2) ** 2])
    return -torch.logsumexp(wells, 0).sum()


def flat_then_deep(u):
    """A flat-bottomed shallow well at u = -1 (weight 0.3), a Gaussian deep one at u = +1:
    the Laplace Gaussian at the first is wide and scores far below log Z."""
    wells = torch.stack([-2 * (u + 1) ** 4 + math.log(0.3), -2 * (u - 1) ** 2])
    return -torch.logsumexp(wells, 0).sum()


def test_a_large_model_restarts_where_its_first_gaussian_fits_poorly(monkeypatch):
    calls = _no_restarts_pay(monkeypatch)
    init = torch.tensor([-0.6], dtype=torch.float64)
    first, _ = find_mode(flat_then_deep, init)
    assert first.item() < 0
    start = laplace_start(flat_then_deep, init)
    assert len(calls) == 1
    assert start.kind == "laplace"
    torch.testing.assert_close(start.loc, torch.tensor([1.0], dtype=torch.float64),
                               atol=1e-3, rtol=0)  # fmt: skip
    torch.testing.assert_close(start.scale, torch.tensor([0.5], dtype=torch.float64),
                               atol=1e-3, rtol=0)  # fmt: skip


def test_a_small_model_restarts_whatever_its_first_gaussian(monkeypatch):
    calls = _restarts_recorded(monkeypatch)
    precision, mode = spd(4), torch.randn(4, dtype=torch.float64)
    laplace_start(quadratic(precision, mode), torch.zeros(4, dtype=torch.float64))
    assert len(calls) == 1


def funnel_potential(u):
    """Neal's funnel in 10-d, float64: its neck holds a proper mode at v = -40.5."""
    v, x = u[0], u[1:]
    return v**2 / 18 + (x**2).sum() / (2 * torch.exp(v)) + len(x) * v / 2


def test_the_proper_rule_passes_over_a_mode_that_holds_none_of_the_mass():
    init = torch.full((10,), 0.3, dtype=torch.float64)
    mode, converged = best_mode(funnel_potential, init)
    assert converged
    assert mode[0].item() < -30
    start = laplace_start(funnel_potential, init, rule="proper")
    assert start.kind == "local"
    assert start.loc.tolist() == init.tolist()


@pytest.mark.parametrize("chunk", [2, 128], ids=["chunked", "one-batch"])
def test_hessian_of_a_quadratic_is_its_precision(chunk):
    precision, mode = spd(5), torch.randn(5, dtype=torch.float64)
    u = torch.randn(5, dtype=torch.float64)
    assert torch.allclose(hessian(quadratic(precision, mode), u, chunk=chunk), precision)
    diagonal = hessian(quadratic(precision, mode), u, diagonal=True, chunk=chunk)
    assert torch.allclose(diagonal, precision.diagonal())


def test_hessian_of_a_linear_potential_is_zero():
    assert torch.equal(hessian(lambda u: u.sum() * 3.0, torch.ones(3)), torch.zeros(3, 3))


def test_covariance_factor_inverts_a_positive_definite_precision():
    precision = spd(6)
    factor, bad = covariance_factor(precision)
    assert not bad.any()
    assert torch.allclose(factor @ factor.T, torch.linalg.inv(precision))
    assert torch.equal(factor, factor.tril())


def test_covariance_factor_decouples_non_finite_and_non_positive_coordinates():
    precision = spd(4)
    precision[1, :] = precision[:, 1] = math.nan
    precision[3, 3] = -2.0
    factor, bad = covariance_factor(precision)
    assert bad.tolist() == [False, True, False, True]
    covariance = factor @ factor.T
    assert covariance[1, 1] == pytest.approx(1.0)  # no usable curvature: scale 1
    assert covariance[3, 3] == pytest.approx(1.0)
    assert covariance[1, [0, 2, 3]].abs().max() < 1e-12  # decoupled
    kept = precision[[0, 2]][:, [0, 2]]
    assert torch.allclose(covariance[[0, 2]][:, [0, 2]], torch.linalg.inv(kept))


def test_covariance_factor_falls_back_coordinate_by_coordinate_when_indefinite():
    # Positive diagonal but indefinite: the strong 0-2 coupling is not a valid precision.
    precision = torch.tensor(
        [[1.0, 0.0, 3.0, 0.0], [0.0, 2.0, 0.0, 0.5], [3.0, 0.0, 1.0, 0.0], [0.0, 0.5, 0.0, 2.0]],
        dtype=torch.float64,
    )
    factor, bad = covariance_factor(precision)
    assert bad.tolist() == [False, False, True, False]
    covariance = factor @ factor.T
    assert covariance[2, 2] == pytest.approx(1.0)  # its own diagonal curvature, 1
    block = precision[[1, 3]][:, [1, 3]]  # the correlated pair keeps its correlation
    assert torch.allclose(covariance[[1, 3]][:, [1, 3]], torch.linalg.inv(block))


def test_gaussian_elbo_is_log_z_with_no_noise_when_q_is_the_target():
    precision = spd(3)
    covariance = torch.linalg.inv(precision)
    mode = torch.randn(3, dtype=torch.float64)
    log_z = 0.5 * torch.logdet(2 * math.pi * covariance)
    elbo = gaussian_elbo(quadratic(precision, mode), mode, torch.linalg.cholesky(covariance))
    assert elbo == pytest.approx(log_z.item(), abs=1e-9)


def test_laplace_start_takes_the_mode_of_a_gaussian_and_its_covariance():
    precision, mode = spd(4), torch.randn(4, dtype=torch.float64)
    start = laplace_start(quadratic(precision, mode), torch.zeros(4, dtype=torch.float64))
    assert start.kind == "laplace"
    assert start.elbo_choice is None
    assert torch.allclose(start.loc, mode, atol=1e-6)
    assert torch.allclose(start.scale_tril @ start.scale_tril.T, torch.linalg.inv(precision))


def test_kl_estimate_of_the_draws_approaches_kl_q_to_p():
    # p = N(0, I) in 2-d, normalised (log Z = 0); q = N(0.3, 1.2^2 I): KL(q || p) in closed form.
    potential = lambda u: 0.5 * (u**2).sum(-1) + math.log(2 * math.pi)  # noqa: E731
    loc, scale = torch.full((2,), 0.3, dtype=torch.float64), 1.2
    log_w = laplace.gaussian_log_weights(potential, loc, scale * torch.eye(2, dtype=torch.float64),
                                         num_draws=20_000)  # fmt: skip
    kl = 2 * (math.log(1 / scale) + (scale**2 + 0.3**2) / 2 - 0.5)
    assert laplace.kl_estimate(log_w) == pytest.approx(kl, abs=0.02)
    assert laplace.kl_estimate(None) == math.inf
    assert laplace.kl_estimate(torch.tensor([0.0, -math.inf])) == math.inf


@pytest.mark.parametrize("rule", ["elbo", "proper"])
def test_an_already_good_laplace_start_skips_the_local_candidates_curvature(monkeypatch, rule):
    calls = []
    monkeypatch.setattr(laplace, "local_start", lambda *a: calls.append(a) or 1 / 0)
    precision, mode = spd(4), torch.randn(4, dtype=torch.float64)
    start = laplace_start(quadratic(precision, mode), torch.zeros(4, dtype=torch.float64),
                          rule=rule)  # fmt: skip
    assert calls == []
    assert start.kind == "laplace"
    assert start.elbo_choice is None
    assert torch.allclose(start.loc, mode, atol=1e-6)


def test_a_laplace_start_not_yet_good_is_still_scored_against_the_local_one(monkeypatch):
    calls = []
    original = laplace.local_start
    monkeypatch.setattr(laplace, "local_start", lambda *a: calls.append(a) or original(*a))
    init = torch.tensor(BANANA_INIT, dtype=torch.float64)
    start = laplace_start(banana_potential, init)
    assert len(calls) == 1
    assert start.kind == "local"


@pytest.mark.parametrize("start_rule", ["elbo", "proper"])
def test_laplace_start_refuses_a_degenerate_mode(start_rule):
    # Neal's funnel: the joint density peaks at v = -40 with x_i pinned to e^{-20}; the
    # Laplace Gaussian there holds none of the posterior's mass, and no rule takes it.
    def model():
        v = pyro.sample("v", dist.Normal(0.0, 3.0))
        pyro.sample("x", dist.Normal(0.0, torch.exp(v / 2)).expand([9]).to_event(1))

    guide = AutoRealNVP(model, num_layers=2, start_rule=start_rule)
    guide()
    assert guide.start.kind == "local"
    assert guide.scale.detach().max() <= 1.0


def banana_potential(u):
    # Haario's banana, x2 | x1 ~ N(0.1 (x1^2 - 100), 1): the Laplace Gaussian does not
    # bend, so its ELBO is far below a narrow local one's, yet it has x1's width of 10.
    x1, x2 = u[0], u[1]
    return x1**2 / 200 + (x2 - 0.1 * (x1**2 - 100)) ** 2 / 2


BANANA_INIT = (-4.0, -8.25)


def test_laplace_start_at_a_proper_mode_wins_by_the_proper_rule_though_it_scores_lower():
    init = torch.tensor(BANANA_INIT, dtype=torch.float64)
    start = laplace_start(banana_potential, init, rule="proper")
    assert start.kind == "laplace"
    assert start.elbo_choice is not None
    assert start.elbo_choice.kind == "local"
    assert start.scale[0].item() == pytest.approx(10.0, rel=1e-3)
    assert start.loc.tolist() == pytest.approx([0.0, -10.0], abs=1e-4)
    scored = gaussian_elbo(banana_potential, start.loc, start.scale_tril)
    assert scored < gaussian_elbo(banana_potential, init, torch.eye(2, dtype=torch.float64)) - 50


def test_laplace_start_by_the_elbo_rule_keeps_the_better_scoring_local_one():
    init = torch.tensor(BANANA_INIT, dtype=torch.float64)
    start = laplace_start(banana_potential, init)  # rule="elbo", the default
    assert start.kind == "local"
    assert start.loc.tolist() == list(BANANA_INIT)
    assert start.scale.max().item() <= 1.0


@pytest.mark.parametrize("rule", ["elbo", "proper"])
def test_a_mode_search_that_hits_its_budget_starts_locally(rule):
    # A hierarchical model's density grows without bound as its scale goes to zero: the
    # search runs down that neck until its budget, and the curvature there would start
    # the guide far too narrow to leave it, whatever the Gaussian's ELBO there.
    def neck(u):  # -log N(u1; 0, e^{u0}): unbounded below as u0 -> -inf at u1 = 0
        return u[0] / 2 + u[1] ** 2 / (2 * torch.exp(u[0]))

    init = torch.tensor([0.0, 0.3], dtype=torch.float64)
    assert not find_mode(neck, init)[1]
    start = laplace_start(neck, init, rule=rule)
    assert start.kind == "local"
    assert start.loc.tolist() == [0.0, 0.3]
    assert start.elbo_choice is None


def test_laplace_start_refuses_an_unknown_rule():
    with pytest.raises(ValueError, match="rule must be one of"):
        laplace_start(banana_potential, torch.zeros(2), rule="laplace")


def _regression(broadcasts: bool, rows: int = 50, weights: int = 6):
    """A regression whose mean broadcasts over particles (``(x * w).sum(-1)``) or not
    (``x @ w``), and a guide set up on it."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(rows, weights, generator=generator, dtype=torch.float64)
    y = x @ torch.linspace(-1, 1, weights, dtype=torch.float64)

    def model():
        w = pyro.sample("w", dist.Normal(x.new_zeros(()), 1.0).expand([weights]).to_event(1))
        sigma = pyro.sample("sigma", dist.HalfNormal(x.new_ones(())))
        with pyro.plate("rows", rows):
            mean = (x * w).sum(-1) if broadcasts else x @ w
            pyro.sample("y", dist.Normal(mean, sigma), obs=y)

    pyro.clear_param_store()
    guide = AutoRealNVP(model)
    guide()
    return Potential(model, guide, full_data=True)


def test_batched_potential_scores_latents_as_one_at_a_time_would():
    potential = _regression(broadcasts=True)
    u = torch.linspace(-0.5, 0.5, 7, dtype=torch.float64)
    score, most = batched_potential(potential, u)
    latents = torch.stack([u, 2 * u, u - 0.3])
    expected = torch.stack([potential(point) for point in latents])
    torch.testing.assert_close(score(latents), expected)
    assert most >= 2


def test_batched_potential_refuses_a_model_that_does_not_broadcast():
    assert batched_potential(_regression(broadcasts=False), torch.zeros(7)) is None
    assert batched_potential(lambda u: (u**2).sum(), torch.zeros(3)) is None


@pytest.mark.parametrize("diagonal", [False, True])
def test_hessian_in_batches_is_the_one_made_a_row_at_a_time(diagonal):
    potential = _regression(broadcasts=True)
    u = torch.linspace(-0.5, 0.5, 7, dtype=torch.float64)
    assert batched_potential(potential, u) is not None  # so the batched rows are tested
    one_at_a_time = hessian(lambda v: potential(v), u, diagonal=diagonal)
    torch.testing.assert_close(hessian(potential, u, diagonal=diagonal), one_at_a_time)


def test_gaussian_elbo_in_batches_is_the_one_scored_a_draw_at_a_time():
    potential = _regression(broadcasts=True)
    loc = torch.full((7,), 0.1, dtype=torch.float64)
    scale_tril = 0.2 * torch.eye(7, dtype=torch.float64)
    batched = gaussian_elbo(potential, loc, scale_tril)
    one_at_a_time = gaussian_elbo(lambda v: potential(v), loc, scale_tril)
    assert batched == pytest.approx(one_at_a_time, rel=1e-9)

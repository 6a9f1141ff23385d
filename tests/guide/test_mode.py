"""The mode search: L-BFGS legs past a stalled line search, restarts, the budget."""

import pyro
import pytest
import torch
from helpers import quadratic, spd, two_wells

from pyro_realnvp.guide import mode as mode_search
from pyro_realnvp.guide.mode import best_mode, deeper_mode, find_mode, restarts_pay


def test_restarts_that_find_the_same_mode_keep_the_first_searchs_point():
    precision, mode = spd(3).float(), torch.tensor([1.0, -2.0, 0.5])
    potential = quadratic(precision, mode)
    first, _ = find_mode(potential, torch.zeros(3))
    kept, converged = best_mode(potential, torch.zeros(3))
    assert converged
    assert torch.equal(kept, first)


def test_no_restart_where_the_first_search_finds_no_mode():
    calls = []

    def descending(u):  # no minimum: a scale on its way to zero
        calls.append(None)
        return u.sum()

    mode, converged = best_mode(descending, torch.zeros(2), max_iter=5)
    assert not converged
    searched = len(calls)
    best_mode(descending, torch.zeros(2), max_iter=5, restarts=0)
    assert len(calls) == 2 * searched  # the same single search, restarts or not


def test_restarts_draw_nothing_from_pyros_random_state():
    pyro.set_rng_seed(0)
    before = torch.get_rng_state()
    best_mode(two_wells, torch.full((2,), -0.6))
    assert torch.equal(before, torch.get_rng_state())


def test_find_mode_reaches_the_minimum_of_a_quadratic():
    precision, mode = spd(6), torch.arange(6, dtype=torch.float64)
    found, converged = find_mode(quadratic(precision, mode), torch.zeros(6, dtype=torch.float64))
    assert converged
    assert torch.allclose(found, mode, atol=1e-6)


def test_find_mode_keeps_the_best_finite_point_where_the_model_raises():
    def potential(u):
        if u[0] > 2.0:  # a model that cannot score part of the space
            raise ValueError("Expected parameter scale to satisfy GreaterThan")
        return ((u - 3.0) ** 2).sum()

    found, _ = find_mode(potential, torch.zeros(1, dtype=torch.float64))
    assert torch.isfinite(found).all()
    assert 0.0 < found.item() <= 2.0


def test_find_mode_stops_at_its_budget():
    rosenbrock = lambda u: (1 - u[0]) ** 2 + 100 * (u[1] - u[0] ** 2) ** 2  # noqa: E731
    _, converged = find_mode(rosenbrock, torch.tensor([-1.5, 2.0]), max_iter=3)
    assert not converged


def float32_regression(rows: int = 2000, dim: int = 50, seed: int = 1):
    """``-log p(w, log sigma | y)`` of a regression, raising where sigma underflows to zero
    as a model's ``Normal`` would; ``(potential, calls that raised)``."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, dim, generator=generator)
    y = x @ torch.randn(dim, generator=generator) + 0.5 * torch.randn(rows, generator=generator)
    raised = []

    def potential(u):
        sigma = torch.exp(u[-1])
        if not bool(sigma > 0):
            raised.append(None)
            raise ValueError("Expected parameter scale to satisfy the constraint GreaterThan")
        residual = y - (x * u[:-1]).sum(-1)
        return (rows * u[-1] + (residual**2).sum() / (2 * sigma**2)
                + 0.5 * (u[:-1] ** 2).sum() + 0.5 * u[-1] ** 2)  # fmt: skip

    return potential, raised


def test_a_search_whose_line_search_stalls_goes_on_from_its_best_point():
    # From log sigma = -1 a quasi-Newton step lands at a sigma that underflows; torch's
    # strong-Wolfe search turns the failed trials into NaN steps, and alone would spend
    # its whole budget there far above the mode (U 2227 against -377).
    potential, raised = float32_regression()
    init = torch.zeros(51)
    init[-1] = -1.0
    found, converged = find_mode(potential, init)
    assert raised, "the search never stepped where the model fails: no stall was tested"
    reference, ok = find_mode(potential, torch.zeros(51))
    assert converged
    assert ok
    assert potential(found).item() == pytest.approx(potential(reference).item(), abs=0.05)


def test_find_mode_preconditioned_by_a_scale_reaches_an_ill_scaled_minimum():
    # Curvatures 1e8 and 1: with the posterior's scale as preconditioner it is a unit bowl.
    scales = torch.tensor([1e-4, 1.0], dtype=torch.float64)
    mode = torch.tensor([0.3, -2.0], dtype=torch.float64)
    potential = lambda u: 0.5 * (((u - mode) / scales) ** 2).sum()  # noqa: E731
    found, converged = find_mode(potential, torch.zeros(2, dtype=torch.float64), scale=scales)
    assert converged
    assert torch.allclose(found, mode, atol=1e-8)


def test_a_short_restart_already_below_the_first_mode_is_searched_to_its_own(monkeypatch):
    """Restarts run ``RESTART_ITERS`` iterations first; one already deeper than the first
    mode then goes on to converge, so two wells far apart are still told apart."""
    monkeypatch.setattr(mode_search, "RESTART_ITERS", 1)
    mode, converged = best_mode(two_wells, torch.tensor([-0.6]))
    assert converged
    torch.testing.assert_close(mode, torch.tensor([1.0]), atol=1e-3, rtol=0)


def test_restarts_pay_below_restart_elements_and_not_above(monkeypatch):
    rows = torch.ones(1000, 1)

    def potential(u):  # 1000 elements from the product, 1 from the sum
        return (u * rows).sum()

    monkeypatch.setattr(mode_search, "RESTART_ELEMENTS", 1001)
    assert restarts_pay(potential, torch.zeros(1))
    monkeypatch.setattr(mode_search, "RESTART_ELEMENTS", 1000)
    assert not restarts_pay(potential, torch.zeros(1))


def test_restarts_pay_where_the_model_cannot_be_scored(monkeypatch):
    def raising(u):
        raise ValueError("Expected parameter scale to satisfy GreaterThan")

    monkeypatch.setattr(mode_search, "RESTART_ELEMENTS", 0)
    assert restarts_pay(raising, torch.zeros(1))  # as before the gate: the search decides


def test_deeper_mode_is_none_where_the_restarts_find_the_first_mode_again():
    precision, mode = spd(3).float(), torch.tensor([1.0, -2.0, 0.5])
    potential = quadratic(precision, mode)
    first, converged = find_mode(potential, torch.zeros(3))
    assert converged
    assert deeper_mode(potential, torch.zeros(3), potential(first)) is None


def test_deeper_mode_returns_the_deeper_well_and_its_value():
    init = torch.tensor([-0.6])
    shallow, _ = find_mode(two_wells, init)
    found = deeper_mode(two_wells, init, two_wells(shallow))
    assert found is not None
    mode, value = found
    torch.testing.assert_close(mode, torch.tensor([1.0]), atol=1e-2, rtol=0)
    torch.testing.assert_close(value, two_wells(mode), atol=1e-5, rtol=0)
    assert value < two_wells(shallow)

"""The non-finite policy for Pyro's ELBOs: a failed step updates nothing and says
which side failed, where in the model, and whether the guide is still usable."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from helpers import poisonable_model
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoNormal, init_to_median

from pyro_realnvp import AutoRealNVP, FiniteELBO, NonFiniteLossError, fit
from pyro_realnvp.infer.finite import explain_non_finite

SMALL = {"num_layers": 2, "hidden_dims": (8,)}


def snapshot(guide):
    return {k: v.detach().clone() for k, v in guide.state_dict().items()}


def test_non_finite_model_raises_names_the_site_and_updates_nothing():
    state = {"poison": False}
    model = poisonable_model(state)
    guide = AutoRealNVP(model, **SMALL)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.01}), FiniteELBO())
    for _ in range(5):
        svi.step()
    before = snapshot(guide)
    state["poison"] = True
    with pytest.raises(NonFiniteLossError, match=r"model's log-density .*\['likelihood'\]"):
        svi.step()
    after = snapshot(guide)
    assert all(torch.equal(before[k], after[k]) for k in before)
    # The guide is still usable: the next good step trains from the last finite state.
    state["poison"] = False
    assert math.isfinite(svi.step())
    assert all(torch.isfinite(p).all() for p in guide.parameters())


def test_non_finite_guide_is_blamed_on_the_guide():
    def model():
        pyro.sample("s", dist.LogNormal(0.0, 1.0))

    guide = AutoRealNVP(model, **SMALL)
    guide()
    guide.loc = torch.tensor([1e3])  # as if training had diverged: exp(1000) overflows
    with pytest.raises(NonFiniteLossError, match=r"guide's log-density .*\['s'\]"):
        fit(model, guide, num_steps=1, progress=False)


@pytest.mark.parametrize("fast", [True, False])
def test_finite_loss_with_non_finite_gradient_is_caught(fast):
    def model():
        x = pyro.sample("x", dist.Normal(0.0, 1.0))
        pyro.factor("kink", torch.sqrt(torch.abs(x) * 0.0))

    guide = AutoRealNVP(model, init_loc_fn=init_to_median, **SMALL)
    with pytest.raises(NonFiniteLossError, match="gradients not") as error:
        fit(model, guide, num_steps=1, progress=False, fast=fast)
    assert error.value.history == []
    assert all(p.grad is None for p in guide.parameters())


def test_finite_elbo_loss_checks_too():
    model = poisonable_model({"poison": True})
    guide = AutoRealNVP(model, **SMALL)
    with pytest.raises(NonFiniteLossError):
        FiniteELBO(Trace_ELBO()).loss(model, guide)


def test_draw_that_breaks_model_validation_is_a_non_finite_step():
    def model():
        x = pyro.sample("x", dist.Normal(0.0, 1.0))
        # exp(-200) underflows to 0 in float32: an invalid scale, as on diamonds.
        pyro.sample("y", dist.Normal(0.0, torch.exp(x - 200.0)), obs=torch.tensor(0.0))

    guide = AutoRealNVP(model, **SMALL)
    with pytest.raises(NonFiniteLossError, match="rejected the guide's draw") as error:
        fit(model, guide, num_steps=2, max_redraws=1, progress=False, fast=False)
    # Pyro's message names no site (the constructor raised before pyro.sample): ours does.
    assert "at site 'y' (test_finite.py:" in str(error.value)
    assert "Expected parameter scale" in str(error.value)
    assert all(torch.isfinite(p).all() for p in guide.parameters())


def test_singular_matrix_at_a_draw_is_a_non_finite_step_that_is_redrawn():
    state = {"calls": 0}

    def model():
        rho = pyro.sample("rho", dist.Normal(0.0, 1.0))
        state["calls"] += 1
        # Every fifth evaluation the "kernel" is singular, as a GP's is at a tail draw.
        off = 2.0 if state["calls"] % 5 == 3 else 0.5
        kernel = torch.tensor([[1.0, off], [off, 1.0]])
        torch.linalg.cholesky(kernel)
        pyro.sample("y", dist.Normal(rho, 1.0), obs=torch.tensor(0.5))

    guide = AutoRealNVP(model, **SMALL)
    with pytest.warns(UserWarning, match="redrawn after a non-finite loss"):
        losses = fit(model, guide, num_steps=20, progress=False, fast=False)
    assert all(math.isfinite(loss) for loss in losses)
    with pytest.raises(NonFiniteLossError, match="linear algebra failed at the guide's draw"):
        FiniteELBO().loss(lambda: model() or torch.linalg.cholesky(-torch.eye(2)), guide)


def test_other_model_errors_are_not_swallowed():
    def model():
        pyro.sample("x", dist.Normal(0.0, 1.0))
        raise ValueError("my model's own bug")

    with pytest.raises(ValueError, match="own bug"):
        fit(model, AutoRealNVP(model, **SMALL), num_steps=1, progress=False)


@pytest.mark.parametrize("fast", [True, False])
def test_a_guide_whose_own_draws_overflow_is_not_called_usable(fast):
    def model():
        pyro.sample("s", dist.LogNormal(0.0, 1.0))

    guide = AutoRealNVP(model, init_loc_fn=init_to_median, **SMALL)
    guide()
    guide.loc = torch.tensor([1e3])  # finite parameters, but exp(1000) overflows
    with pytest.raises(NonFiniteLossError) as error:
        fit(model, guide, num_steps=1, progress=False, fast=fast)
    message = str(error.value)
    assert "still usable" not in message
    assert "not usable" in message


def test_a_model_that_raises_is_located_after_its_last_site():
    def model():
        x = pyro.sample("x", dist.Normal(0.0, 1.0))
        pyro.sample("y", dist.Normal(torch.sqrt(x - 10.0), 1.0), obs=torch.tensor(0.0))

    guide = AutoNormal(lambda: pyro.sample("x", dist.Normal(0.0, 1.0)))
    guide()
    reason = explain_non_finite(model, guide)
    # The constructor raised before pyro.sample("y", ...) ran: the source line names 'y'.
    assert reason.startswith("the model raised at site 'y' (test_finite.py:")
    assert "after site 'x' (the last sample site it reached), at the guide's draw" in reason


def test_a_model_failing_while_the_guide_sets_up_is_located_too():
    def model():
        x = pyro.sample("x", dist.Normal(0.0, 1.0))
        pyro.factor("f", x * torch.nan)

    reason = explain_non_finite(model, AutoRealNVP(model, **SMALL))
    assert reason.startswith("the model raised at site 'f'")
    assert "after site 'x' (the last sample site it reached), at the default initial" in reason
    assert "while the guide set itself up" in reason


def test_a_rejected_draw_names_the_site_and_says_the_error_once():
    data = torch.zeros(5)

    def model():
        v = pyro.sample("v", dist.Normal(0.0, 1.0))
        with pyro.plate("data", len(data)):
            pyro.sample("y", dist.Normal(v, 1.0), obs=data)
        pyro.factor("bad", v * torch.nan)

    guide = AutoNormal(model)
    with pytest.raises(NonFiniteLossError) as error:
        fit(model, guide, num_steps=2, progress=False, max_redraws=1)
    message = str(error.value)
    assert message.startswith("the model rejected the guide's draw: the model raised at site")
    assert "at site 'bad' (test_finite.py:" in message
    # The plate's own index site is no sample site of the user's: the last one was 'y'.
    assert "after site 'y' (the last sample site it reached)" in message
    assert message.count("Expected parameter log_factor") == 1
    assert "Trace Shapes" not in message  # Pyro's shape table is too long for a reason

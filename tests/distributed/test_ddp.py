"""DataParallelELBO and fit_distributed in one process (test_distributed.py runs 2)."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.nn import PyroModule, PyroParam

from pyro_realnvp import AutoRealNVP, NonFiniteLossError, RankFailedError, fit
from pyro_realnvp.distributed import DataParallelELBO, fit_distributed, setup_guide


def regression(x: torch.Tensor, y: torch.Tensor):
    def model():
        w = pyro.sample("w", dist.Normal(torch.zeros(2), 1.0).to_event(1))
        with pyro.plate("data", len(x)):
            pyro.sample("y", dist.Normal(x @ w, 0.5), obs=y)

    return model


def test_one_process_matches_fit():
    """The ELBO module's differentiable loss gives fit's loss_and_grads numbers."""
    x = torch.randn(30, 2)
    model = regression(x, x @ torch.tensor([1.0, -1.0]))
    histories, params = [], []
    for train in (fit, fit_distributed):
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        guide = AutoRealNVP(model, num_layers=2)
        setup_guide(model, guide)  # the same initial parameters in both
        pyro.set_rng_seed(3)  # and the same noise
        histories.append(train(model, guide, num_steps=20, progress=False))
        params.append(guide.loc.detach().clone())
    torch.testing.assert_close(torch.tensor(histories[1]), torch.tensor(histories[0]))
    torch.testing.assert_close(params[1], params[0])


@pytest.mark.filterwarnings("ignore:Encountered NaN")
def test_non_finite_step_raises_and_keeps_grads_clear():
    def model():
        x = pyro.sample("x", dist.Normal(0.0, 1.0))
        pyro.factor("bad", x * float("nan"))

    guide = pyro.infer.autoguide.AutoNormal(model)
    elbo = DataParallelELBO()
    with (
        pyro.validation_enabled(False),
        pytest.raises(NonFiniteLossError, match=r"not finite on rank\(s\) \[0\] \(rank 0: loss"),
    ):
        elbo.loss_and_grads(model, guide)
    assert all(p.grad is None for _, p in pyro.get_param_store().named_parameters())


def test_a_raising_model_raises_rank_failed_error_naming_rank_0():
    calls = []

    def model():
        calls.append(1)
        if len(calls) > 2:  # after the set-up
            raise KeyError("bad row")
        pyro.sample("x", dist.Normal(0.0, 1.0))

    guide = pyro.infer.autoguide.AutoNormal(model)
    with pytest.raises(RankFailedError, match=r"rank 0 raised KeyError\("):
        fit_distributed(model, guide, num_steps=2, progress=False)


def test_parameters_outside_modules_are_refused():
    def model():
        shift = pyro.param("shift", torch.tensor(0.0))
        pyro.sample("x", dist.Normal(shift, 1.0))

    guide = pyro.infer.autoguide.AutoNormal(model)
    with pytest.raises(ValueError, match=r"\['shift'\] are in Pyro's param store but in no"):
        fit_distributed(model, guide, num_steps=1, progress=False)


class ShiftedModel(PyroModule):
    def __init__(self) -> None:
        super().__init__()
        self.shift = PyroParam(torch.tensor(0.0))

    def forward(self) -> None:
        x = pyro.sample("x", dist.Normal(self.shift, 1.0))
        pyro.sample("y", dist.Normal(x, 0.1), obs=torch.tensor(2.0))


def test_parameters_of_a_pyro_module_model_are_trained():
    model = ShiftedModel()
    guide = pyro.infer.autoguide.AutoNormal(model)
    fit_distributed(model, guide, num_steps=50, lr=0.05, progress=False)
    assert model.shift.item() > 0.5  # pulled towards the data at 2


def test_setup_guide_leaves_the_random_state_alone():
    model = regression(torch.randn(5, 2), torch.randn(5))
    pyro.set_rng_seed(1)
    expected = torch.rand(3)
    pyro.set_rng_seed(1)
    params = setup_guide(model, AutoRealNVP(model, num_layers=2))
    assert torch.equal(torch.rand(3), expected)
    assert "AutoRealNVP.loc" in params


def test_a_draw_rejected_at_set_up_is_explained_as_fit_explains_it():
    def model():
        x = pyro.sample("x", dist.Normal(0.0, 1.0))
        pyro.factor("bad", x * float("nan"))

    messages = []
    for train in (fit, fit_distributed):
        pyro.clear_param_store()
        with pytest.raises(NonFiniteLossError) as error:
            train(model, pyro.infer.autoguide.AutoNormal(model), num_steps=2, progress=False)
        messages.append(str(error.value))
    assert messages[1].startswith("rank 0 (setting up the guide and model): ")
    shared = messages[1].split(": ", 1)[1]
    assert shared in messages[0]  # fit's, less its count of redraws
    assert "at site 'bad'" in shared


def test_a_model_raising_at_set_up_is_named_without_pyros_shape_table():
    def model():
        raise ValueError("bad row 3")

    with pytest.raises(
        RankFailedError, match=r"rank 0 raised ValueError\('bad row 3'\) \("
    ) as error:
        setup_guide(model, AutoRealNVP(model, num_layers=2))
    assert "Trace Shapes" not in str(error.value)

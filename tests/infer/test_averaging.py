import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer.autoguide import AutoNormal
from pyro.nn import PyroModule, PyroParam
from torch.distributions import constraints

from pyro_realnvp import AutoRealNVP, NonFiniteLossError, TrainingInterrupted, fit
from pyro_realnvp.infer import SVIStep
from pyro_realnvp.infer import svi as infer_module
from pyro_realnvp.infer.averaging import AVERAGE, AveragedStep
from pyro_realnvp.infer.fast import FastStep
from pyro_realnvp.infer.loop import Schedule, train


def regression(data):
    w = pyro.sample("w", dist.Normal(torch.zeros(2), 1.0).to_event(1))
    with pyro.plate("rows", data.shape[0]):
        pyro.sample("y", dist.Normal((data * w).sum(-1), 1.0), obs=data.sum(-1))


def ema(iterates: list[list[torch.Tensor]], horizon: float) -> list[torch.Tensor]:
    """The moving average written out by hand: start at the first, then move 1/h of the way."""
    average = [p.clone() for p in iterates[0]]
    for params in iterates[1:]:
        average = [a + (p - a) / horizon for a, p in zip(average, params, strict=True)]
    return average


def snapshot(params) -> list[torch.Tensor]:
    return [p.detach().clone() for p in params]


def build_step(kind: str, data: torch.Tensor):
    schedule = Schedule(lr=0.05, lr_decay=1.0, clip_norm=10.0, num_steps=30)
    if kind == "fast":  # its parameters are views of one flat buffer while it trains
        guide = AutoRealNVP(regression, num_layers=2, hidden_dims=(8,))
        return FastStep.build(regression, guide, (data,), {}, 4, schedule)
    guide = AutoNormal(regression)
    return SVIStep(regression, guide, pyro.infer.Trace_ELBO(), schedule.pyro_optim(), (data,), {})


@pytest.mark.parametrize("kind", ["fast", "svi"])
def test_write_sets_every_parameter_to_the_moving_average_of_its_iterates(kind):
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    inner = build_step(kind, torch.randn(50, 2))
    step = AveragedStep(inner, inner.parameters, horizon=4)
    iterates = []
    train(
        step,
        30,
        progress=False,
        monitor=lambda i, loss: iterates.append(snapshot(inner.parameters())),
    )
    last = iterates[-1]
    step.write()
    expected = ema(iterates, 4)
    for param, want in zip(inner.parameters(), expected, strict=True):
        assert torch.allclose(param, want, atol=1e-6)
    assert any(not torch.allclose(a, b) for a, b in zip(expected, last, strict=True))


def test_a_step_that_raised_does_not_enter_the_average():
    theta, calls = torch.zeros(1), []

    class SecondCallFails:
        name = "fails once"

        def __call__(self):
            calls.append(None)
            if len(calls) == 2:
                raise NonFiniteLossError("drawn far out")  # updated nothing
            theta.add_(1.0)
            return 0.0

        def clear_grads(self):
            pass

    step = AveragedStep(SecondCallFails(), lambda: [theta], horizon=2)
    with pytest.warns(UserWarning, match="1 of 3 SVI steps were redrawn"):
        history = train(step, 3, max_redraws=1, progress=False)
    step.write()
    assert history.redraws == 1
    assert theta.item() == pytest.approx(2.25)  # iterates 1, 2, 3: 1 -> 1.5 -> 2.25


def test_a_horizon_of_one_step_keeps_the_last_iterate():
    theta = torch.zeros(1)

    class Count:
        name = "count"

        def __call__(self):
            theta.add_(1.0)
            return 0.0

        def clear_grads(self):
            pass

    step = AveragedStep(Count(), lambda: [theta], horizon=0.5)
    train(step, 5, progress=False)
    step.write()
    assert theta.item() == 5.0


def recording(monkeypatch) -> list:
    """Every iterate of the parameters ``fit`` averages, recorded through train's monitor."""
    iterates, real_train = [], infer_module.train

    def train_and_record(step, *args, **kwargs):
        find = step.step.parameters if isinstance(step, AveragedStep) else step.parameters
        params = []  # as the average holds them: found at the first step, in that order

        def record(index, loss):
            params[:] = params or find()
            iterates.append((params, snapshot(params)))

        kwargs["monitor"] = record
        return real_train(step, *args, **kwargs)

    monkeypatch.setattr(infer_module, "train", train_and_record)
    return iterates


@pytest.mark.parametrize("fast", [True, False])
def test_fit_ends_at_the_average_over_a_fifteenth_of_its_steps(monkeypatch, fast):
    iterates = recording(monkeypatch)
    data = torch.randn(100, 2)
    pyro.clear_param_store()
    pyro.set_rng_seed(1)
    guide = AutoRealNVP(regression, num_layers=2, hidden_dims=(8,))
    fit(regression, guide, data, num_steps=60, lr=0.05, progress=False, fast=fast)
    params = iterates[-1][0]
    expected = ema([values for _, values in iterates], AVERAGE * 60)
    for param, want in zip(params, expected, strict=True):
        assert torch.allclose(param, want, atol=1e-6)
    assert not torch.allclose(guide.loc, iterates[-1][1][0])  # not the last iterate


@pytest.mark.parametrize("average", [None, 0])
def test_fit_without_averaging_ends_at_the_last_iterate_with_the_same_losses(average):
    data, ends = torch.randn(100, 2), {}
    # AutoNormal is averaged only where asked: by default fit trains it as Pyro's loop does.
    for name, option in (("averaged", {"average": AVERAGE}), ("last", {"average": average})):
        pyro.clear_param_store()
        pyro.set_rng_seed(2)
        guide = AutoNormal(regression)
        losses = fit(regression, guide, data, num_steps=40, lr=0.05, progress=False, **option)
        ends[name] = (losses, guide.median()["w"])
    assert ends["averaged"][0] == ends["last"][0]  # the iterates are the same
    assert not torch.allclose(ends["averaged"][1], ends["last"][1])


def test_a_fit_stopped_early_ends_at_its_last_iterate(monkeypatch):
    # Its average, sized for the whole run, would still lag near the start.
    iterates, calls = recording(monkeypatch), []
    data = torch.randn(100, 2)

    def model(data):
        calls.append(None)
        if len(calls) == 25:
            raise KeyboardInterrupt
        regression(data)

    pyro.clear_param_store()
    pyro.set_rng_seed(3)
    guide = AutoNormal(model)
    with pytest.raises(TrainingInterrupted):
        fit(model, guide, data, num_steps=300, lr=0.05, progress=False)
    params, last = iterates[-1]
    for param, want in zip(params, last, strict=True):
        assert torch.equal(param, want)
    assert 0 < len(iterates) < 300


def test_svi_step_averages_the_param_sites_svi_trains_and_nothing_else_in_the_store():
    pyro.clear_param_store()
    pyro.param("unrelated", torch.ones(3))  # an earlier fit's, say

    def model(data):
        noise = pyro.param("noise", torch.tensor(1.0), constraint=constraints.positive)
        w = pyro.sample("w", dist.Normal(torch.zeros(2), 1.0).to_event(1))
        with pyro.plate("rows", data.shape[0]):
            pyro.sample("y", dist.Normal((data * w).sum(-1), noise), obs=data.sum(-1))

    guide = AutoNormal(model)
    step = SVIStep(model, guide, pyro.infer.Trace_ELBO(), pyro.optim.Adam({"lr": 0.01}),
                   (torch.randn(20, 2),), {})  # fmt: skip
    assert step.parameters() == []
    step()
    store = pyro.get_param_store()
    names = {store.param_name(p) for p in step.parameters()}
    assert names == {"noise", "AutoNormal.locs.w", "AutoNormal.scales.w"}


def test_svi_step_averages_a_module_local_param_of_the_model():
    class Model(PyroModule):
        def __init__(self):
            super().__init__()
            self.noise = PyroParam(torch.tensor(1.0), constraints.positive)

        def forward(self, data):
            w = pyro.sample("w", dist.Normal(torch.zeros(2), 1.0).to_event(1))
            with pyro.plate("rows", data.shape[0]):
                pyro.sample("y", dist.Normal((data * w).sum(-1), self.noise), obs=data.sum(-1))

    with pyro.settings.context(module_local_params=True):
        model = Model()
        guide = AutoNormal(model)
        step = SVIStep(model, guide, pyro.infer.Trace_ELBO(), pyro.optim.Adam({"lr": 0.01}),
                       (torch.randn(20, 2),), {})  # fmt: skip
        step()
        trained = step.parameters()
    assert any(p is model.noise_unconstrained for p in trained)
    assert len(trained) == 3  # and the guide's loc and scale


@pytest.mark.parametrize("average", [-0.1, 1.5, float("nan"), "1/15"])
def test_fit_refuses_an_average_outside_zero_to_one_naming_it(average):
    error = TypeError if isinstance(average, str) else ValueError
    with pytest.raises(error, match="average must be None or a number in"):
        fit(regression, AutoNormal(regression), torch.randn(5, 2), num_steps=2, average=average)


def test_fit_averages_an_autorealnvp_by_default_and_a_pyro_guide_only_where_asked():
    data = torch.randn(100, 2)
    ends = {}
    for name, make, option in (
        ("pyro default", lambda: AutoNormal(regression), {}),
        ("pyro last", lambda: AutoNormal(regression), {"average": None}),
    ):
        pyro.clear_param_store()
        pyro.set_rng_seed(2)
        guide = make()
        fit(regression, guide, data, num_steps=40, lr=0.05, progress=False, **option)
        ends[name] = guide.median()["w"]
    assert torch.equal(ends["pyro default"], ends["pyro last"])

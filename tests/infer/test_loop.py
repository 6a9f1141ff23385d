import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer.autoguide import AutoNormal

import pyro_realnvp.infer.loop as loop
from pyro_realnvp import fit
from pyro_realnvp.infer.loop import (
    History,
    NonFiniteLossError,
    Schedule,
    TrainingInterrupted,
    train,
)

ROOT = Path(__file__).resolve().parents[2]


class Toy:
    """A step on one parameter whose loss is scripted: ``None`` means non-finite."""

    name = "toy"

    def __init__(self, script=(), on_call=None):
        self.param = torch.zeros(1, requires_grad=True)
        self.script, self.calls, self.on_call = list(script), 0, on_call

    def __call__(self) -> float:
        self.calls += 1
        self.param.grad = torch.ones(1)
        if self.on_call is not None:
            self.on_call(self.calls)
        loss = self.script.pop(0) if self.script else 1.0
        if loss is None:
            self.param.grad = None
            raise NonFiniteLossError("scripted")
        with torch.no_grad():
            self.param -= 0.1
        self.param.grad = None
        return loss

    def clear_grads(self) -> None:
        self.param.grad = None


def test_non_finite_steps_are_redrawn_counted_and_warned():
    step = Toy([None, 3.0, None, None, 2.0, 1.0])
    with pytest.warns(UserWarning, match="3 of 3 SVI steps were redrawn"):
        history = train(step, 3, max_redraws=2, progress=False)
    assert history == [3.0, 2.0, 1.0]
    assert history.redraws == 3
    assert step.calls == 6


def test_a_step_that_stays_non_finite_raises_with_the_history_so_far():
    step = Toy([5.0, None, None, None])
    with pytest.raises(NonFiniteLossError, match="over 3 fresh draws") as error:
        train(step, 4, max_redraws=2, progress=False)
    assert error.value.history == [5.0]


def test_no_redraws_means_the_first_failure_raises():
    with pytest.raises(NonFiniteLossError, match="scripted$"):
        train(Toy([None]), 2, max_redraws=0, progress=False)


def test_first_ctrl_c_waits_for_the_step_to_finish():
    def press(call):
        if call == 3:
            os.kill(os.getpid(), signal.SIGINT)

    step = Toy(on_call=press)
    with pytest.raises(TrainingInterrupted) as error:
        train(step, 100, progress=False)
    # The step that was running when Ctrl-C came completed its update, then the loop stopped.
    assert len(error.value.history) == 3
    assert step.param.item() == pytest.approx(-0.3)
    assert step.param.grad is None
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_second_ctrl_c_stops_inside_the_step_and_clears_its_gradients():
    def press_twice(call):
        if call == 2:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)  # raises here, before the update

    step = Toy(on_call=press_twice)
    with pytest.raises(TrainingInterrupted) as error:
        train(step, 100, progress=False)
    assert error.value.history == [1.0]
    assert step.param.item() == pytest.approx(-0.1)
    assert step.param.grad is None  # the interrupted step's gradient is not left behind


def test_monitor_fields_stay_on_the_progress_bar(monkeypatch):
    shown = []
    monkeypatch.setattr(
        "tqdm.auto.tqdm.set_postfix", lambda self, **fields: shown.append(dict(fields))
    )

    def monitor(index, loss):
        return {"valid": f"{index}"} if index % 2 == 0 else {}

    train(Toy(), 4, progress=True, monitor=monitor)
    # A step that reports nothing new keeps the last reported field next to the loss.
    assert [fields.get("valid") for fields in shown] == ["0", "0", "2", "2"]


def test_schedule_decays_lr_to_lr_times_decay_and_clips_the_total_norm():
    param = torch.zeros(3, requires_grad=True)
    other = torch.zeros(1, requires_grad=True)
    schedule = Schedule(lr=0.1, lr_decay=0.01, clip_norm=2.0, num_steps=10)
    optimizer, decay = schedule.torch_optimizer([param, other])
    for _ in range(10):
        optimizer.step()
        decay.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.001)
    param.grad, other.grad = torch.tensor([-6.0, 0.0, 0.0]), torch.tensor([8.0])
    schedule.clip([param, other])
    # Norm 10 over both tensors, scaled to 2: the direction is kept.
    assert param.grad.tolist() == pytest.approx([-1.2, 0.0, 0.0])
    assert other.grad.tolist() == pytest.approx([1.6])
    param.grad = torch.tensor([0.3, 0.4, 0.0])
    schedule.clip([param])
    assert param.grad.tolist() == pytest.approx([0.3, 0.4, 0.0])  # within the bound


def test_pyros_svi_steps_with_the_same_rule():
    # NormClippedAdam clips the total norm over all of SVI's parameters, then Adam steps:
    # a first Adam step moves each entry by lr whatever the gradient's size.
    x, y = torch.zeros(2, requires_grad=True), torch.zeros(1, requires_grad=True)
    pyro.clear_param_store()
    pyro.get_param_store()["x"], pyro.get_param_store()["y"] = x, y
    x, y = pyro.param("x").unconstrained(), pyro.param("y").unconstrained()
    x.grad, y.grad = torch.tensor([300.0, 0.0]), torch.tensor([-400.0])
    optim = Schedule(lr=0.1, lr_decay=1.0, clip_norm=5.0, num_steps=1).pyro_optim()
    optim([x, y])
    assert x.grad.tolist() == pytest.approx([3.0, 0.0])  # clipped from norm 500 to 5
    assert y.grad.tolist() == pytest.approx([-4.0])
    assert x.tolist() == pytest.approx([-0.1, 0.0], abs=1e-6)
    assert y.tolist() == pytest.approx([0.1], abs=1e-6)


def test_history_is_a_list_with_what_the_run_did():
    history = History([1.0, 2.0], redraws=1, method="fast", note="why")
    assert isinstance(history, list)
    assert (history.redraws, history.method, history.note) == (1, "fast", "why")


CHILD = textwrap.dedent(
    """
    import json, math, sys
    import pyro, pyro.distributions as dist, torch
    import pyro_realnvp.infer.loop as loop
    from pyro_realnvp import AutoRealNVP, TrainingInterrupted, fit

    def announce(*args, started=[], **kwargs):  # say when the first step begins
        if not started:
            started.append(print("training", flush=True))
        return first_step(*args, **kwargs)

    first_step, loop._step_with_redraws = loop._step_with_redraws, announce

    def model(data):
        w = pyro.sample("w", dist.Normal(torch.zeros(3), 1.0).to_event(1))
        with pyro.plate("rows", data.shape[0]):
            pyro.sample("y", dist.Normal((data * w).sum(-1), 1.0), obs=data.sum(-1))

    data = torch.randn(200, 3)
    guide = AutoRealNVP(model, num_layers=2, hidden_dims=(8,))
    try:
        fit(model, guide, data, num_steps=10**7, progress=False, fast=sys.argv[1] == "fast")
        result = {"interrupted": False}
    except TrainingInterrupted as error:
        params = list(guide.parameters())
        result = {
            "interrupted": True,
            "steps": len(error.history),
            "finite_history": all(math.isfinite(v) for v in error.history),
            "grads_cleared": all(p.grad is None for p in params),
            "params_finite": all(bool(torch.isfinite(p).all()) for p in params),
        }
        more = fit(model, guide, data, num_steps=20, progress=False)
        result["resumed"] = len(more) == 20 and all(math.isfinite(v) for v in more)
    print(json.dumps(result), flush=True)
    """
)


@pytest.mark.parametrize("path", ["fast", "svi"])
def test_a_real_sigint_during_fit_keeps_a_usable_guide_and_the_history(path):
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, path],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert child.stdout.readline().strip() == "training"
    time.sleep(1.0)
    child.send_signal(signal.SIGINT)
    out, err = child.communicate(timeout=120)
    assert child.returncode == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    assert result == {
        "interrupted": True,
        "steps": result["steps"],
        "finite_history": True,
        "grads_cleared": True,
        "params_finite": True,
        "resumed": True,
    }
    assert result["steps"] > 0


def test_ctrl_c_during_fit_density_keeps_the_best_and_the_history(monkeypatch):
    from pyro_realnvp import RealNVP, fit_density

    calls, step_once = [], loop._step_with_redraws

    def press_at_step_five(*args, **kwargs):
        calls.append(None)
        if len(calls) == 5:
            os.kill(os.getpid(), signal.SIGINT)
        return step_once(*args, **kwargs)

    monkeypatch.setattr(loop, "_step_with_redraws", press_at_step_five)
    flow = RealNVP(2, num_layers=2, hidden_dims=(8,))
    with pytest.raises(TrainingInterrupted) as error:
        fit_density(flow, torch.randn(64, 2), num_steps=10**7, progress=False)
    assert len(error.value.history) == 5
    assert all(p.grad is None for p in flow.parameters())
    assert all(bool(torch.isfinite(p).all()) for p in flow.parameters())
    assert not flow.training  # evaluation mode restored on the way out


class Terminal(io.StringIO):
    def isatty(self):
        return True


def model():
    pyro.sample("x", dist.Normal(0.0, 1.0))


@pytest.mark.parametrize(
    ("progress", "stream", "shown"),
    [(True, Terminal, True), (True, io.StringIO, False), (False, Terminal, False)],
    ids=["on-terminal", "on-pipe", "off-terminal"],
)
def test_progress_bar_shows_the_loss_only_on_a_terminal_when_asked(
    monkeypatch, progress, stream, shown
):
    monkeypatch.setattr(sys, "stderr", stream())
    losses = fit(model, AutoNormal(model), num_steps=20, progress=progress)
    output = sys.stderr.getvalue()
    assert ("loss=" in output) == shown
    if shown:
        assert f"loss={losses[-1]:.4g}" in output
        assert "20/20" in output

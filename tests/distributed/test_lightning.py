"""SVIModule under Lightning: 2 CPU processes (gloo) against 1, checkpoints, resume, NaN steps."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pyro
import pyro.distributions as dist
import pytest
import torch

pl = pytest.importorskip("lightning.pytorch", reason="needs the lightning extra")

from helpers import free_port  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from pyro_realnvp import NonFiniteLossError, fit  # noqa: E402
from pyro_realnvp.distributed import data_plate  # noqa: E402
from pyro_realnvp.distributed.lightning import SVIModule  # noqa: E402
from pyro_realnvp.infer.loop import RedrawPolicy, Schedule  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "examples" / "lightning_logistic_regression.py"
#: A float64 smoke run: 40 rows, 20 steps, checkpoints every 10 steps.
SMOKE = ["--num-data", "40", "--dim", "3", "--num-layers", "2", "--float64", "--no-progress"]
SMOKE += ["--checkpoint-every", "10"]
WAIT_S = 180


def load_example():
    spec = importlib.util.spec_from_file_location("lightning_example", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def two_devices(tmp_path_factory):
    """The example with ``--devices 2``: Lightning starts the second process itself."""
    out = tmp_path_factory.mktemp("two")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    env |= {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    env |= {"GLOO_SOCKET_IFNAME": "lo"}
    argv = [sys.executable, str(SCRIPT), *SMOKE, "--num-steps", "20", "--devices", "2"]
    done = subprocess.run(
        [*argv, "--out-dir", str(out)], env=env, capture_output=True, text=True, timeout=WAIT_S
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return {
        "out": out,
        "stdout": done.stdout,
        "result": json.loads((out / "result.json").read_text()),
    }


def run_in_process(out: Path, *extra: str, callbacks=()) -> dict:
    example = load_example()
    args = example.parse_args([*SMOKE, "--out-dir", str(out), *extra])
    with contextlib.redirect_stdout(io.StringIO()):
        return example.main(args, callbacks)


def checkpoint_params(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=False)["state_dict"]


def test_two_devices_match_one_process(two_devices, tmp_path):
    one = run_in_process(tmp_path, "--num-steps", "20", "--devices", "1")
    two = two_devices["result"]
    assert (one["world_size"], two["world_size"]) == (1, 2)
    torch.testing.assert_close(
        torch.tensor(two["losses"]), torch.tensor(one["losses"]), rtol=1e-6, atol=1e-6
    )
    mine = checkpoint_params(tmp_path / "checkpoints" / "last.ckpt")
    theirs = checkpoint_params(two_devices["out"] / "checkpoints" / "last.ckpt")
    assert set(mine) == set(theirs)
    for name, value in mine.items():
        torch.testing.assert_close(theirs[name], value, rtol=1e-6, atol=1e-6, msg=name)


def test_only_rank_0_reports(two_devices):
    assert two_devices["stdout"].count("2 process(es), N = 40, batches of 20 per rank") == 1


class RecordStart(pl.Callback):
    def on_train_start(self, trainer, pl_module):
        self.step = trainer.global_step
        self.params = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}


def test_resume_continues_from_a_two_process_checkpoint(two_devices, tmp_path):
    checkpoint = two_devices["out"] / "checkpoints" / "last.ckpt"
    start = RecordStart()
    resumed = run_in_process(
        tmp_path, "--num-steps", "25", "--resume", str(checkpoint), callbacks=[start]
    )
    assert (start.step, resumed["global_step"], len(resumed["losses"])) == (20, 25, 5)
    saved = checkpoint_params(checkpoint)
    assert all(torch.equal(start.params[name], value) for name, value in saved.items())
    # The guide reads the same tensors as the param store, so the store holds them too
    # (the unconstrained location: in the start's units, pyro_realnvp.guide.units).
    stored = pyro.get_param_store().get_state()["params"]["AutoRealNVP.loc"]
    assert torch.equal(stored.detach(), resumed_loc(tmp_path / "checkpoints"))


def resumed_loc(folder: Path) -> torch.Tensor:
    state = checkpoint_params(folder / "last.ckpt")
    return state["guarded.elbo_module.guide.loc_unconstrained"]


def flaky_model(y: torch.Tensor, fail: list[bool]):
    """A model whose likelihood is NaN while ``fail[0]`` is true."""

    def model(y_batch: torch.Tensor) -> None:
        mu = pyro.sample("mu", dist.Normal(0.0, 10.0))
        shift = float("nan") if fail[0] else 0.0
        with data_plate("data", len(y), len(y_batch)) as idx:
            pyro.sample("y", dist.Normal(mu + shift, 1.0), obs=y_batch[idx])

    return model


def train(svi: SVIModule, y: torch.Tensor, steps: int, callbacks=()) -> pl.Trainer:
    trainer = pl.Trainer(
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=list(callbacks),
    )
    trainer.fit(svi, DataLoader(TensorDataset(y), batch_size=len(y)))
    return trainer


class FailFirst(pl.Callback):
    """Make the model fail for the first ``count`` batches."""

    def __init__(self, fail: list[bool], count: int) -> None:
        self.fail, self.count, self.seen = fail, count, 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.fail[0] = self.seen < self.count
        self.seen += 1


@pytest.mark.filterwarnings("ignore:Encountered NaN")
def test_a_non_finite_batch_is_skipped_and_training_goes_on():
    y, fail = torch.randn(20) + 3.0, [False]
    model = flaky_model(y, fail)
    svi = SVIModule(model, pyro.infer.autoguide.AutoNormal(model), y, lr=0.05, max_redraws=3)
    with pytest.warns(UserWarning, match="2 of 32 SVI steps were redrawn"):  # as fit warns
        trainer = train(svi, y, 30, [FailFirst(fail, 2)])
    assert (svi.redraws, len(svi.losses), trainer.global_step) == (2, 30, 30)


@pytest.mark.filterwarnings("ignore:Encountered NaN")
def test_steps_non_finite_too_often_raise_and_update_nothing():
    y, fail = torch.randn(20) + 3.0, [False]
    model = flaky_model(y, fail)
    svi = SVIModule(model, pyro.infer.autoguide.AutoNormal(model), y, max_redraws=2)
    before = {k: v.detach().clone() for k, v in svi.state_dict().items()}
    fail[0] = True
    with pytest.raises(NonFiniteLossError, match=r"rank\(s\) \[0\].*over 3 fresh draws"):
        train(svi, y, 10)
    assert all(torch.equal(v, before[k]) for k, v in svi.state_dict().items())


# One loop for every trainer: fit and SVIModule take the same Schedule and RedrawPolicy, so
# a change made there shows in both.


def fit_params(model, steps: int) -> dict[str, torch.Tensor]:
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    guide = pyro.infer.autoguide.AutoNormal(model)
    fit(model, guide, model.y, num_steps=steps, lr=0.05, average=None, progress=False)
    return {k: v.detach().clone() for k, v in pyro.get_param_store().named_parameters()}


def lightning_params(model, steps: int) -> dict[str, torch.Tensor]:
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    svi = SVIModule(model, pyro.infer.autoguide.AutoNormal(model), model.y, lr=0.05)
    train(svi, model.y, steps)
    return {k: v.detach().clone() for k, v in pyro.get_param_store().named_parameters()}


@pytest.mark.parametrize("trainer", [fit_params, lightning_params], ids=["fit", "SVIModule"])
def test_a_change_to_the_schedules_decay_shows_in_every_trainer(trainer, monkeypatch):
    y = torch.randn(20) + 3.0
    model = flaky_model(y, [False])
    model.y = y
    moving = [trainer(model, steps) for steps in (1, 3)]
    assert any(not torch.equal(moving[0][k], moving[1][k]) for k in moving[0])
    # A decay to nothing after the first step, in Schedule alone: no trainer moves after it.
    monkeypatch.setattr(Schedule, "gamma", property(lambda self: 0.0))
    frozen = [trainer(model, steps) for steps in (1, 3)]
    assert all(torch.equal(frozen[0][k], frozen[1][k]) for k in frozen[0])


@pytest.mark.filterwarnings("ignore:Encountered NaN", "ignore:.*redrawn:UserWarning")
@pytest.mark.parametrize("trainer", ["fit", "SVIModule"])
def test_a_change_to_the_redraw_policy_shows_in_every_trainer(trainer, monkeypatch):
    y = torch.randn(20) + 3.0
    fail = [False]
    model = flaky_model(y, fail)

    def run() -> None:
        pyro.clear_param_store()
        guide = pyro.infer.autoguide.AutoNormal(model)
        if trainer == "fit":  # its first step's draw is rejected, then the model recovers
            calls = []
            original = guide.forward

            def fail_first(*args, **kwargs):
                fail[0] = not calls
                calls.append(1)
                return original(*args, **kwargs)

            guide.forward = fail_first
            fit(model, guide, y, num_steps=3, lr=0.05, progress=False, max_redraws=3)
        else:
            svi = SVIModule(model, guide, y, lr=0.05, max_redraws=3)
            train(svi, y, 3, [FailFirst(fail, 1)])

    run()  # one non-finite step, redrawn: training goes on
    # No redraw at all, in RedrawPolicy alone: both trainers raise at the first failure.
    monkeypatch.setattr(RedrawPolicy, "failed", lambda self, error: (_ for _ in ()).throw(error))
    with pytest.raises(NonFiniteLossError):
        run()

"""One rank of a scenario of test_distributed.py beside it (run as a script per rank).

    python tests/distributed/_distributed_worker.py {train,failures,all} OUTDIR

with ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT`` set, as torchrun does.
"""

from __future__ import annotations

import json
import sys
from datetime import timedelta
from pathlib import Path

import pyro
import pyro.distributions as dist
import torch

from pyro_realnvp import AutoRealNVP
from pyro_realnvp.distributed import (
    DataParallelELBO,
    data_plate,
    fit_distributed,
    load_checkpoint,
    max_parameter_divergence,
    process_group,
    save_checkpoint,
    shard,
)

NUM_DATA = 40
NUM_STEPS = 15
LR = 0.05
NOISE_SEED = 1234


def make_data() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(NUM_DATA, 3, generator=generator, dtype=torch.float64)
    w = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    y = x @ w + 0.3 * torch.randn(NUM_DATA, generator=generator, dtype=torch.float64)
    return x, y


def make_model(x: torch.Tensor, y: torch.Tensor):
    """Linear regression on the shard ``(x, y)`` of ``NUM_DATA`` observations, in float64.

    Once ``model.failure`` is set it fails: ``"raises"`` raises, ``"nan-data"`` sees a NaN
    in ``y``, ``"zero-scale"`` builds a Normal of scale 0 (a draw the model rejects),
    ``"grad"`` adds a factor whose value is 0 and whose gradient is NaN.
    """
    zero = torch.zeros((), dtype=torch.float64)
    y_nan = y.clone()
    y_nan[0] = float("nan")

    def model():
        failure = model.failure
        w = pyro.sample("w", dist.Normal(zero.expand(3), 1.0).to_event(1))
        sigma = pyro.sample("sigma", dist.LogNormal(zero, 1.0))
        if failure == "raises":
            raise RuntimeError("corrupt shard")
        if failure == "grad":
            pyro.factor("kink", (w[0] * 0.0).abs().sqrt())  # sqrt'(0) * 0 = NaN
        observed = y_nan if failure == "nan-data" else y
        scale = sigma * 0.0 if failure == "zero-scale" else sigma
        with data_plate("data", NUM_DATA, len(x)) as idx:
            pyro.sample("y", dist.Normal(x[idx] @ w, scale), obs=observed[idx])

    model.failure = None
    return model


def make_guide(model) -> AutoRealNVP:
    return AutoRealNVP(model, num_layers=2, hidden_dims=(8,))


def store_tensors() -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in pyro.get_param_store().named_parameters()}


def train(rank: int, out: Path) -> None:
    """Start apart, wrap in DDP, load a one-process checkpoint, train on a shard, save."""
    x, y = shard(*make_data())
    model = make_model(x, y)
    guide = make_guide(model)
    pyro.set_rng_seed(100 + rank)  # deliberately different initial parameters per rank
    with pyro.poutine.block():
        guide()
    report = {"divergence_before_broadcast": max_parameter_divergence()}
    DataParallelELBO().module(model, guide)  # DDP copies rank 0's parameters to every rank
    report["divergence_after_broadcast"] = max_parameter_divergence()
    load_checkpoint(out / "init.pt")
    init = torch.load(out / "init.pt", weights_only=False)["params"]
    report["max_diff_to_loaded"] = max(
        (store_tensors()[k] - v).abs().max().item() for k, v in init.items()
    )
    pyro.set_rng_seed(NOISE_SEED)  # the same base noise on every rank, as the reference
    report["losses"] = fit_distributed(model, guide, num_steps=NUM_STEPS, lr=LR, progress=False)
    save_checkpoint(out / "final.pt")
    torch.save(store_tensors(), out / f"rank{rank}.pt")
    (out / f"report{rank}.json").write_text(json.dumps(report))


#: Failure scenarios on rank 1: (name, what rank 1's model does, validation on?).
FAILURES = [
    ("raises", "raises", True),  # a bug in the model: RankFailedError
    ("invalid-data", "nan-data", True),  # validation rejects the data: RankFailedError
    ("rejected", "zero-scale", True),  # validation rejects the draw: NonFiniteLossError
    ("nan", "nan-data", False),  # the loss is NaN
    ("grad", "grad", False),  # the loss is finite, its gradients are not
]


def failures(rank: int, out: Path) -> None:
    """Rank 1's step fails in each scenario; every rank must stop with an error naming rank 1.

    All scenarios run in the same processes, one after the other: after a failure the
    process group must still work. Each records whether any parameter moved.
    """
    x, y = shard(*make_data())
    outcomes = {}
    for scenario, failure, validate in FAILURES:
        pyro.clear_param_store()
        model = make_model(x, y)
        guide = make_guide(model)
        with pyro.validation_enabled(validate):
            elbo = DataParallelELBO()
            elbo.module(model, guide)  # set up and wrapped before rank 1's model fails
            before = store_tensors()
            model.failure = failure if rank == 1 else None
            try:
                fit_distributed(model, guide, loss=elbo, num_steps=3, progress=False)
                outcomes[scenario] = {"type": None, "message": ""}
            except Exception as error:  # noqa: BLE001 - the test reads what each rank raised
                outcomes[scenario] = {"type": type(error).__name__, "message": str(error)}
        outcomes[scenario]["moved"] = any(
            not torch.equal(value, before[name]) for name, value in store_tensors().items()
        )
    (out / f"failures{rank}.json").write_text(json.dumps(outcomes))


def main(scenario: str, out: Path) -> None:
    torch.set_num_threads(1)
    with process_group("gloo", timeout=timedelta(seconds=30)) as (rank, _):
        # Both scenarios share one pair of processes: starting Python and torch is most
        # of a test's time, and the failures must leave the process group usable anyway.
        if scenario in ("train", "all"):
            train(rank, out)
        if scenario in ("failures", "all"):
            failures(rank, out)


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))

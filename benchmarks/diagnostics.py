"""Diagnostics on models Pyro cannot vectorize, and how steady a k-hat reading is.

Run ``python -m benchmarks.diagnostics --out docs/diagnostics.md`` (``make
bench-diagnostics``); ``--smoke`` runs a few draws of everything. Two tables, written
between their markers in the page:

- **Any model**: the issue-28 models (a Dirichlet-Categorical, an ``LKJ(3)`` correlation
  matrix, a 134-latent hierarchical model on 10,000 rows read 256 at a time, Pyro's
  Bayesian regression tutorial's ``PyroModule``), each after a 300-step ``fit``: the
  seconds of a default ``psis_khat`` and ``to_inference_data``, how the draws were
  scored, the k-hat, and whether the InferenceData holds every latent site.
- **Repeats**: one fitted guide (3000 steps) of a banana and of the regression tutorial,
  its default k-hat read 10 times: the span of the readings, and each reading.

Timings are on this machine's CPU, one torch thread.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule, PyroSample
from torch import nn

from benchmarks.stability import hierarchical
from benchmarks.targets import banana
from pyro_realnvp import AutoRealNVP, fit, psis_khat, to_inference_data

__all__ = ["main", "parse_args"]

MARKERS = {
    "models": ("<!-- any-model table: written by `make bench-diagnostics` -->\n",
               "\n<!-- end any-model table -->"),
    "repeats": ("<!-- repeats table: written by `make bench-diagnostics` -->\n",
                "\n<!-- end repeats table -->"),
}  # fmt: skip


def dirichlet_categorical(data):
    p = pyro.sample("p", dist.Dirichlet(torch.ones(3)))
    with pyro.plate("rows", data.shape[0]):
        pyro.sample("obs", dist.Categorical(p).expand([5]).to_event(1), obs=data)


def lkj(y):
    corr = pyro.sample("corr", dist.LKJ(3, 2.0))
    sd = pyro.sample("sd", dist.HalfNormal(torch.ones(3)).to_event(1))
    cov = sd[..., :, None] * corr * sd[..., None, :]
    with pyro.plate("rows", y.shape[0]):
        pyro.sample("y", dist.MultivariateNormal(torch.zeros(3), covariance_matrix=cov), obs=y)


class BayesianRegression(PyroModule):
    """Pyro's Bayesian regression tutorial's model, as it is written there."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.linear = PyroModule[nn.Linear](in_features, out_features)
        self.linear.weight = PyroSample(
            dist.Normal(0.0, 1.0).expand([out_features, in_features]).to_event(2)
        )
        self.linear.bias = PyroSample(dist.Normal(0.0, 10.0).expand([out_features]).to_event(1))

    def forward(self, x, y=None):
        sigma = pyro.sample("sigma", dist.Uniform(0.0, 10.0))
        mean = self.linear(x).squeeze(-1)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("obs", dist.Normal(mean, sigma), obs=y)
        return mean


def models() -> dict:
    """The issue-28 models with their data: ``name -> (model, args)``."""
    generator = torch.Generator().manual_seed(0)
    rows = torch.multinomial(torch.tensor([0.2, 0.3, 0.5]), 250, True, generator=generator)
    factor = torch.tensor([[1.0, 0.0, 0.0], [0.5, 0.8, 0.0], [0.2, -0.3, 0.9]])
    x = torch.randn(170, 3, generator=generator)
    y = x @ torch.tensor([1.0, -0.5, 0.3]) + 2.0 + 0.5 * torch.randn(170, generator=generator)
    return {
        "Dirichlet-Categorical": (dirichlet_categorical, (rows.reshape(50, 5),)),
        "LKJ(3) correlation matrix": (lkj, (torch.randn(100, 3, generator=generator) @ factor.T,)),
        "134-latent hierarchical, 10,000 rows": hierarchical(),
        "regression tutorial (PyroModule)": (BayesianRegression(3, 1), (x, y)),
    }


def timed(call):
    start = time.perf_counter()
    value = call()
    return value, time.perf_counter() - start


def fitted(model, args, num_steps: int) -> AutoRealNVP:
    """A default AutoRealNVP of ``model``, fitted for ``num_steps`` from seed 0."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    guide = AutoRealNVP(model)
    fit(model, guide, *args, num_steps=num_steps, progress=False)
    return guide


def any_model_row(name: str, model, args, smoke: bool) -> str:
    guide = fitted(model, args, 10 if smoke else 300)
    sizes = {"num_samples": 20, "num_sets": 2} if smoke else {}
    khat, khat_seconds = timed(lambda: psis_khat(model, guide, *args, **sizes))
    data, data_seconds = timed(lambda: to_inference_data(
        model, guide, *args, **({"num_samples": 10} if smoke else {})
    ))  # fmt: skip
    latents = {site for site, _ in guide.prototype_trace.iter_stochastic_nodes()}
    every = latents <= set(data.posterior.data_vars)
    return (f"| {name} | {khat.method} | {float(khat):.2f} ({khat.reading}) | "
            f"{khat_seconds:.1f} | {data_seconds:.1f} | {'yes' if every else 'NO'} |")  # fmt: skip


def repeats_row(name: str, model, args, smoke: bool) -> str:
    guide = fitted(model, args, 10 if smoke else 3000)
    sizes = {"num_samples": 20, "num_sets": 2} if smoke else {}
    readings = [psis_khat(model, guide, *args, **sizes) for _ in range(10)]
    values = [float(k) for k in readings]
    reads = sorted({k.reading for k in readings})
    return (f"| {name} | {max(values) - min(values):.3f} | {', '.join(reads)} | "
            f"{', '.join(f'{v:.2f}' for v in values)} |")  # fmt: skip


def write_between(path: Path, markers: tuple[str, str], table: str) -> None:
    text = path.read_text()
    start, end = markers
    head, rest = text.split(start)
    _, tail = rest.split(end)
    path.write_text(head + start + table + end + tail)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="the page to write the tables in")
    parser.add_argument("--smoke", action="store_true", help="a few draws of everything")
    return parser.parse_args(argv)


def main(args: argparse.Namespace) -> dict[str, str]:
    torch.set_num_threads(1)
    rows = [any_model_row(name, *case, args.smoke) for name, case in models().items()]
    tables = {
        "models": "| model | scored by | k-hat | psis_khat s | to_inference_data s | "
                  "every latent |\n|---|---|---|---|---|---|\n" + "\n".join(rows),
    }  # fmt: skip
    target = banana(2)
    regression = models()["regression tutorial (PyroModule)"]
    rows = [
        repeats_row("banana (2-d)", target.model, target.args, args.smoke),
        repeats_row("regression tutorial", *regression, args.smoke),
    ]
    tables["repeats"] = ("| posterior | span of 10 readings | read | readings |\n"
                         "|---|---|---|---|\n" + "\n".join(rows))  # fmt: skip
    for key, table in tables.items():
        print(table, flush=True)
        if args.out is not None:
            write_between(args.out, MARKERS[key], table)
    return tables


if __name__ == "__main__":
    main(parse_args())

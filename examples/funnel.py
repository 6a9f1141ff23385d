"""Neal's funnel: AutoRealNVP against AutoNormal on a posterior with a neck.

    v ~ Normal(0, 3),   x_i | v ~ Normal(0, exp(v / 2)),  i = 1..D-1

The model has no data and its density is normalised, so -ELBO is exactly KL(q || p):
the lower, the closer the guide is to the true posterior. Run ``python examples/funnel.py``;
``--num-steps 50`` gives a fast smoke run.
"""

from __future__ import annotations

import argparse
import time

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import Predictive, Trace_ELBO
from pyro.infer.autoguide import AutoNormal
from pyro.infer.importance import psis_diagnostic

from pyro_realnvp import AutoRealNVP, fit


def funnel(dim: int = 10):
    def model():
        v = pyro.sample("v", dist.Normal(0.0, 3.0))
        scale = torch.exp(v / 2).unsqueeze(-1).expand(v.shape + (dim - 1,))
        pyro.sample("x", dist.Normal(0.0, scale).to_event(1))

    return model


@torch.no_grad()
def kl_estimate(model, guide, num_particles: int = 4000) -> float:
    """KL(q || p) = -ELBO for this normalised model, by Monte Carlo."""
    return Trace_ELBO(num_particles=num_particles, vectorize_particles=True).loss(model, guide)


def main(args: argparse.Namespace) -> dict:
    pyro.set_rng_seed(args.seed)
    model = funnel(args.dim)
    guides = {"AutoNormal": AutoNormal(model), "AutoRealNVP": AutoRealNVP(model)}
    rows = {}
    for name, guide in guides.items():
        start = time.perf_counter()
        fit(model, guide, num_steps=args.num_steps, lr=args.lr, progress=args.progress)
        seconds = time.perf_counter() - start
        v = Predictive(model, guide=guide, num_samples=4000, parallel=True)()["v"]
        rows[name] = {
            "KL(q||p)": kl_estimate(model, guide),
            "sd(v) (true 3.0)": v.std().item(),
            "PSIS k-hat": psis_diagnostic(model, guide, num_particles=2000),
            "seconds": seconds,
        }
    print(f"Neal's funnel, D = {args.dim}, {args.num_steps} SVI steps, lr {args.lr}")
    columns = list(next(iter(rows.values())))
    print(f"{'guide':<12}" + "".join(f"{c:>18}" for c in columns))
    for name, row in rows.items():
        print(f"{name:<12}" + "".join(f"{row[c]:>18.3f}" for c in columns))
    ratio = rows["AutoNormal"]["KL(q||p)"] / max(rows["AutoRealNVP"]["KL(q||p)"], 1e-9)
    print(f"AutoRealNVP's KL is {ratio:.1f}x smaller than AutoNormal's.")
    return rows


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-steps", type=int, default=3000)
    parser.add_argument("--dim", type=int, default=10)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True)
    return parser.parse_args(argv)


if __name__ == "__main__":
    main(parse_args())

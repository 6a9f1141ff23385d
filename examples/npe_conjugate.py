"""Neural posterior estimation with ConditionalRealNVP on a conjugate normal model.

Simulate pairs ``(theta, x)`` from a Pyro model, fit ``q(theta | x)`` by maximum
likelihood on them, then condition on observed data sets and compare with the exact
Gaussian posterior: ``theta ~ N(0, tau^2 I)``, ``x_j ~ N(theta, sigma^2 I)``, so
``theta | x ~ N(m, v I)`` with ``v = 1 / (1/tau^2 + n/sigma^2)``, ``m = v sum_j x_j / sigma^2``.

    python examples/npe_conjugate.py
"""

from __future__ import annotations

import argparse

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import Predictive

from pyro_realnvp import ConditionalRealNVP
from pyro_realnvp.density import fit_density, flow_distribution


def model(num_obs: int, dim: int, tau: float, sigma: float):
    theta = pyro.sample("theta", dist.Normal(0.0, tau).expand([dim]).to_event(1))
    with pyro.plate("obs", num_obs):
        return pyro.sample("x", dist.Normal(theta, sigma).to_event(1))


def exact_posterior(x: torch.Tensor, tau: float, sigma: float) -> tuple[torch.Tensor, float]:
    """Mean ``(..., D)`` and per-coordinate standard deviation of ``theta | x``."""
    variance = 1 / (1 / tau**2 + x.shape[-2] / sigma**2)
    return variance * x.sum(-2) / sigma**2, variance**0.5


def main(args: argparse.Namespace) -> dict[str, float]:
    pyro.set_rng_seed(args.seed)
    shape = (args.num_obs, args.dim, args.tau, args.sigma)
    simulate = Predictive(model, num_samples=args.num_sims, return_sites=["theta", "x"])
    pairs = simulate(*shape)
    # Predictive keeps a singleton batch dimension; context is the flattened data set.
    theta = pairs["theta"].reshape(args.num_sims, args.dim)
    x = pairs["x"].reshape(args.num_sims, args.num_obs * args.dim)

    flow = ConditionalRealNVP(
        args.dim, x.shape[-1], args.num_layers, (args.hidden, args.hidden), output_gain=1.0
    )
    fit_density(
        flow,
        theta,
        context=x,
        num_steps=args.num_steps,
        batch_size=args.batch_size,
        lr=args.lr,
        progress=args.progress,
    )

    # Fresh observed data sets, each from its own true theta: amortised, one network.
    observed = Predictive(model, num_samples=args.num_tests, return_sites=["x"])(*shape)["x"]
    observed = observed.reshape(args.num_tests, args.num_obs, args.dim)
    mean, std = exact_posterior(observed, args.tau, args.sigma)
    posterior = flow_distribution(flow).condition(observed.flatten(-2))
    with torch.no_grad():
        draws = posterior.sample((args.num_draws, args.num_tests))  # (draws, tests, D)
    mean_error = (draws.mean(0) - mean).abs() / std
    std_error = (draws.std(0) / std - 1).abs()
    results = {
        "mean_error_in_posterior_sd": float(mean_error.mean()),
        "max_mean_error_in_posterior_sd": float(mean_error.max()),
        "std_relative_error": float(std_error.mean()),
    }
    print(f"NPE on {args.num_tests} fresh data sets ({args.num_sims} simulations)")
    print(f"  exact posterior sd {std:.4f}")
    print(
        f"  |mean error| / posterior sd: mean {results['mean_error_in_posterior_sd']:.3f}, "
        f"max {results['max_mean_error_in_posterior_sd']:.3f}"
    )
    print(f"  |sd / exact sd - 1|: mean {results['std_relative_error']:.3f}")
    return results


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=2)
    parser.add_argument("--num-obs", type=int, default=5)
    parser.add_argument("--tau", type=float, default=2.0)
    parser.add_argument("--sigma", type=float, default=1.0)
    parser.add_argument("--num-sims", type=int, default=10000)
    parser.add_argument("--num-steps", type=int, default=2000)
    parser.add_argument("--num-layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--num-tests", type=int, default=20)
    parser.add_argument("--num-draws", type=int, default=4000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-progress", dest="progress", action="store_false")
    return parser.parse_args(argv)


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(parse_args())

"""Eight schools, centred: AutoRealNVP and AutoNormal against NUTS.

    mu ~ Normal(0, 5),  tau ~ HalfCauchy(5),  theta_j ~ Normal(mu, tau),
    y_j ~ Normal(theta_j, sigma_j),  j = 1..8

The centred parametrisation puts a funnel between tau and the theta_j: the textbook case
where NUTS diverges and mean-field guides shrink tau towards zero. NUTS draws are the
reference; each guide's PSIS k-hat says whether its posterior can be trusted. Run
``python examples/eight_schools.py``; ``--num-steps 30 --num-warmup 20 --num-samples 20``
gives a fast smoke run.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import MCMC, NUTS
from pyro.infer.autoguide import AutoNormal

from pyro_realnvp import AutoRealNVP, fit, plot_loss, plot_pair, psis_khat, to_inference_data

Y = torch.tensor([28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0])
SIGMA = torch.tensor([15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0])


def model(sigma: torch.Tensor, y: torch.Tensor | None = None) -> None:
    mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = pyro.sample("tau", dist.HalfCauchy(5.0))
    with pyro.plate("school", len(sigma)):
        theta = pyro.sample("theta", dist.Normal(mu, tau))
        pyro.sample("obs", dist.Normal(theta, sigma), obs=y)


def summarize(draws: dict) -> dict:
    """Posterior mean and sd of mu and log tau, and the mean of theta_1."""
    log_tau = torch.as_tensor(draws["tau"]).log()
    mu = torch.as_tensor(draws["mu"])
    return {
        "mean mu": mu.mean().item(),
        "sd mu": mu.std().item(),
        "mean log tau": log_tau.mean().item(),
        "sd log tau": log_tau.std().item(),
        "mean theta_1": torch.as_tensor(draws["theta"])[..., 0].mean().item(),
    }


def pair_view(draws: dict) -> dict:
    """The coordinates where the centred funnel shows: mu, log tau and theta_1."""
    return {"mu": draws["mu"], "log tau": draws["tau"].log(), "theta_1": draws["theta"][:, 0]}


def run_nuts(args: argparse.Namespace) -> dict:
    mcmc = MCMC(
        NUTS(model, max_tree_depth=args.max_tree_depth),
        num_samples=args.num_samples,
        warmup_steps=args.num_warmup,
        disable_progbar=not args.progress,
    )
    mcmc.run(SIGMA, Y)
    return {name: value.detach() for name, value in mcmc.get_samples().items()}


def main(args: argparse.Namespace) -> dict:
    pyro.set_rng_seed(args.seed)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    nuts = run_nuts(args)
    rows = {"NUTS": summarize(nuts)}
    guides = {
        "AutoNormal": AutoNormal(model),
        "AutoRealNVP": AutoRealNVP(model, num_layers=args.num_layers),
    }
    ax = None
    for name, guide in guides.items():
        losses = fit(
            model, guide, SIGMA, Y, num_steps=args.num_steps, lr=args.lr, progress=args.progress
        )
        ax = plot_loss(losses, ax=ax, label=name)
        idata = to_inference_data(model, guide, SIGMA, Y, num_samples=args.num_draws)
        draws = {site: torch.as_tensor(idata.posterior[site].values[0]) for site in nuts}
        rows[name] = summarize(draws) | {
            "PSIS k-hat": psis_khat(model, guide, SIGMA, Y, num_samples=args.num_draws)
        }
        plot_pair(
            pair_view(draws),
            pair_view(nuts),
            labels=(name, "NUTS"),
            path=out_dir / f"pair_{name}.png",
        )
    ax.figure.savefig(out_dir / "loss.png", dpi=120, bbox_inches="tight")
    print(f"Eight schools (centred), {args.num_steps} SVI steps, NUTS {args.num_samples} draws")
    columns = list(rows["AutoRealNVP"])
    print(f"{'method':<12}" + "".join(f"{c:>14}" for c in columns))
    for name, row in rows.items():
        print(f"{name:<12}" + "".join(f"{row.get(c, float('nan')):>14.3f}" for c in columns))
    print(f"figures in {out_dir}/")
    return rows


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-steps", type=int, default=5000)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--num-layers", type=int, default=8, help="AutoRealNVP couplings")
    parser.add_argument("--num-warmup", type=int, default=1000, help="NUTS warm-up steps")
    parser.add_argument("--max-tree-depth", type=int, default=10, help="NUTS tree depth")
    parser.add_argument("--num-samples", type=int, default=2000, help="NUTS draws")
    parser.add_argument("--num-draws", type=int, default=4000, help="guide draws")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", default="out/eight_schools", help="where figures go")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True)
    return parser.parse_args(argv)


if __name__ == "__main__":
    main(parse_args())

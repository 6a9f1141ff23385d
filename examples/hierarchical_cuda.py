"""A hierarchical regression fitted on CUDA when there is a GPU (on CPU otherwise).

    mu_a ~ Normal(0, 5),  sigma_a ~ HalfNormal(2),  a_g ~ Normal(mu_a, sigma_a),
    b ~ Normal(0, 5),  sigma_y ~ HalfNormal(2),  y_n ~ Normal(a_{g(n)} + b x_n, sigma_y)

The data are simulated on the chosen device, so AutoRealNVP builds its flow there too:
no global default device and no ``.to()``. With few observations per group the
(sigma_a, a_g) posterior is a funnel. Reported: the device, seconds per SVI step, the
PSIS k-hat and the error of the posterior means of the group intercepts.
``--num-steps 20 --groups 10`` gives a smoke run.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pyro
import pyro.distributions as dist
import torch

from pyro_realnvp import AutoRealNVP, fit, plot_loss, psis_khat, to_inference_data


def model(group: torch.Tensor, x: torch.Tensor, num_groups: int, y=None) -> None:
    zero = x.new_zeros(())
    mu_a = pyro.sample("mu_a", dist.Normal(zero, 5.0))
    sigma_a = pyro.sample("sigma_a", dist.HalfNormal(zero + 2.0))
    with pyro.plate("group", num_groups):
        a = pyro.sample("a", dist.Normal(mu_a, sigma_a))
    b = pyro.sample("b", dist.Normal(zero, 5.0))
    sigma_y = pyro.sample("sigma_y", dist.HalfNormal(zero + 2.0))
    with pyro.plate("data", len(x)):
        mean = a[..., group] + b * x
        pyro.sample("y", dist.Normal(mean, sigma_y), obs=y)


def simulate(num_groups: int, per_group: int, device: torch.device, seed: int) -> dict:
    """Data with known group intercepts ``a`` (``sigma_a`` 1, ``sigma_y`` 2)."""
    generator = torch.Generator(device=device).manual_seed(seed)

    def normal(*shape):
        return torch.randn(shape, generator=generator, device=device)

    a = 1.0 + normal(num_groups)
    group = torch.arange(num_groups, device=device).repeat_interleave(per_group)
    x = normal(len(group))
    y = a[group] + 0.5 * x + 2.0 * normal(len(group))
    return {"group": group, "x": x, "num_groups": num_groups, "y": y, "true_a": a}


def pick_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda asked for, but torch sees no CUDA device")
    return torch.device(name)


def main(args: argparse.Namespace) -> dict:
    pyro.set_rng_seed(args.seed)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = pick_device(args.device)
    data = simulate(args.groups, args.per_group, device, args.seed)
    true_a = data.pop("true_a")
    guide = AutoRealNVP(model, num_layers=args.num_layers)
    start = time.perf_counter()
    losses = fit(
        model, guide, **data, num_steps=args.num_steps, lr=args.lr, progress=args.progress
    )
    seconds = time.perf_counter() - start
    plot_loss(losses, label=f"AutoRealNVP on {device.type}", path=out_dir / "loss.png")
    idata = to_inference_data(model, guide, **data, num_samples=args.num_draws)
    mean_a = torch.as_tensor(idata.posterior["a"].mean(("chain", "draw")).values)
    rows = {
        "AutoRealNVP": {
            "PSIS k-hat": psis_khat(model, guide, **data, num_samples=args.num_draws),
            "ms per step": 1000 * seconds / len(losses),  # it may stop before num_steps
            "RMSE of a": (mean_a - true_a.cpu()).pow(2).mean().sqrt().item(),
            "on CUDA": float(guide.loc.is_cuda),
        }
    }
    row = rows["AutoRealNVP"]
    print(f"Hierarchical regression, {args.groups} groups x {args.per_group}, on {device}")
    print("  ".join(f"{name} {value:.3f}" for name, value in row.items()))
    print(f"k-hat reads {row['PSIS k-hat'].reading!r}; figures in {out_dir}/")
    return rows


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-steps", type=int, default=3000)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--groups", type=int, default=50)
    parser.add_argument("--per-group", type=int, default=5)
    parser.add_argument("--num-layers", type=int, default=8)
    parser.add_argument("--num-draws", type=int, default=2000, help="guide draws")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", default="out/hierarchical_cuda", help="figures go here")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True)
    return parser.parse_args(argv)


if __name__ == "__main__":
    main(parse_args())

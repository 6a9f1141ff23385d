"""Data-parallel SVI: Bayesian logistic regression with AutoRealNVP on torch's DDP.

    w ~ Normal(0, 1)^D,  b ~ Normal(0, 3),  y_n | x_n ~ Bernoulli(sigmoid(x_n . w + b))

Each rank evaluates the likelihood on its own shard of the N observations, under a
``pyro.plate`` of size N; DistributedDataParallel averages the gradients during the
backward pass (``fit_distributed``). examples/lightning_logistic_regression.py is the
same with Lightning.

    python examples/distributed_logistic_regression.py                    # one process
    torchrun --nproc_per_node=2 examples/distributed_logistic_regression.py

``--num-steps 20`` gives a fast smoke run. See docs/distributed.md for several machines.
"""

from __future__ import annotations

import argparse
import time

import pyro
import pyro.distributions as dist
import torch

from pyro_realnvp import AutoRealNVP
from pyro_realnvp.distributed import (
    data_plate,
    fit_distributed,
    is_main_process,
    process_group,
    save_checkpoint,
    seed_rank,
    shard,
)


def make_data(num_data: int, dim: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Synthetic data, the same on every rank (a real job would read only its shard)."""
    generator = torch.Generator().manual_seed(seed)
    true_w = torch.randn(dim, generator=generator)
    x = torch.randn(num_data, dim, generator=generator)
    logits = x @ true_w + 0.5
    y = torch.bernoulli(torch.sigmoid(logits), generator=generator)
    return x, y, true_w


def logistic_regression(x: torch.Tensor, y: torch.Tensor, num_data: int, batch_size=None):
    """The model on this rank's shard ``(x, y)``; the plate scales it to ``num_data``."""
    dim = x.shape[-1]

    def model():
        w = pyro.sample("w", dist.Normal(torch.zeros(dim), 1.0).to_event(1))
        b = pyro.sample("b", dist.Normal(0.0, 3.0))
        with data_plate("data", num_data, len(x), batch_size=batch_size) as idx:
            pyro.sample("y", dist.Bernoulli(logits=x[idx] @ w + b), obs=y[idx])

    return model


def main(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    with process_group() as (rank, world_size):
        x, y, true_w = make_data(args.num_data, args.dim)
        x_local, y_local = shard(x, y)
        model = logistic_regression(x_local, y_local, args.num_data, args.batch_size)
        seed_rank(args.seed)  # a different noise seed per rank: the ranks split the particles
        guide = AutoRealNVP(model, num_layers=args.num_layers)
        start = time.perf_counter()
        losses = fit_distributed(
            model, guide, num_steps=args.num_steps, lr=args.lr, progress=args.progress
        )
        seconds = time.perf_counter() - start
        w_mean = guide.median()["w"]
        if args.checkpoint:
            save_checkpoint(args.checkpoint)
        result = {
            "world_size": world_size,
            "final_loss": losses[-1],
            "steps_per_s": args.num_steps / seconds,
            "w_error": (w_mean - true_w).abs().max().item(),
        }
        if is_main_process():
            print(
                f"{world_size} process(es), N = {args.num_data} ({len(x_local)} per rank), "
                f"{args.num_steps} steps: final loss {result['final_loss']:.1f}, "
                f"{result['steps_per_s']:.1f} steps/s, "
                f"max |median(w) - true w| = {result['w_error']:.3f}"
            )
    return result


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-steps", type=int, default=1000)
    parser.add_argument("--num-data", type=int, default=20_000)
    parser.add_argument("--dim", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=None, help="minibatch per rank")
    parser.add_argument("--num-layers", type=int, default=4)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--checkpoint", default=None, help="rank 0 writes the params here")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True)
    return parser.parse_args(argv)


if __name__ == "__main__":
    main(parse_args())

"""Data-parallel SVI with Lightning: Bayesian logistic regression with AutoRealNVP.

    w ~ Normal(0, 1)^D,  b ~ Normal(0, 3),  y_n | x_n ~ Bernoulli(sigmoid(x_n . w + b))

The model takes a batch ``(x, y)`` and scales it to the N observations with a plate of
size N. Lightning launches the processes, hands each rank its share of every epoch,
wraps the module in DistributedDataParallel, and writes and resumes checkpoints.

    python examples/lightning_logistic_regression.py                  # one process
    python examples/lightning_logistic_regression.py --devices 2      # two, on CPU (gloo)
    python examples/lightning_logistic_regression.py --accelerator gpu --devices 4  # NCCL
    python examples/lightning_logistic_regression.py --resume out/lightning/checkpoints/last.ckpt

Needs ``pip install "pyro-realnvp[lightning]"``. ``--num-steps 20`` gives a fast smoke
run. See docs/distributed.md for several machines.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
import warnings
from pathlib import Path

import lightning.pytorch as pl
import pyro
import pyro.distributions as dist
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader

from pyro_realnvp import AutoRealNVP
from pyro_realnvp.distributed import Blocks, data_plate
from pyro_realnvp.distributed.lightning import SVIModule


def make_data(num_data: int, dim: int, dtype: torch.dtype, seed: int = 0):
    """Synthetic data, the same in every process (a real job would stream it from disk)."""
    generator = torch.Generator().manual_seed(seed)
    true_w = torch.randn(dim, generator=generator, dtype=dtype)
    x = torch.randn(num_data, dim, generator=generator, dtype=dtype)
    y = torch.bernoulli(torch.sigmoid(x @ true_w + 0.5), generator=generator)
    return x, y, true_w


def logistic_regression(num_data: int):
    """The model on a batch ``(x, y)``; the plate scales its likelihood to ``num_data`` rows."""

    def model(x: torch.Tensor, y: torch.Tensor) -> None:
        zero = x.new_zeros(())
        w = pyro.sample("w", dist.Normal(zero.expand(x.shape[-1]), 1.0).to_event(1))
        b = pyro.sample("b", dist.Normal(zero, 3.0))
        with data_plate("data", num_data, len(x), device=x.device) as idx:
            pyro.sample("y", dist.Bernoulli(logits=x[idx] @ w + b), obs=y[idx])

    return model


def make_trainer(args: argparse.Namespace, callbacks=()) -> pl.Trainer:
    processes = args.devices * args.num_nodes
    checkpoints = ModelCheckpoint(
        dirpath=Path(args.out_dir) / "checkpoints",
        every_n_train_steps=args.checkpoint_every,
        save_last=True,
    )
    return pl.Trainer(
        accelerator=args.accelerator,
        devices=args.devices,
        num_nodes=args.num_nodes,
        strategy="ddp" if processes > 1 else "auto",
        max_steps=args.num_steps,
        default_root_dir=args.out_dir,
        callbacks=[checkpoints, *callbacks],
        logger=pl.loggers.CSVLogger(args.out_dir),
        log_every_n_steps=10,
        enable_progress_bar=args.progress,
        enable_model_summary=False,
    )


def main(args: argparse.Namespace, callbacks=()) -> dict:
    """Train, print a summary on rank 0 and write it to ``out_dir/result.json``."""
    torch.set_num_threads(args.threads)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    # Checkpoints after the optimizer step are what we want; one batch per epoch is too.
    warnings.filterwarnings("ignore", "Using ModelCheckpoint with manual optimization")
    warnings.filterwarnings("ignore", "The number of training batches")
    dtype = torch.float64 if args.float64 else torch.float32
    pyro.set_rng_seed(args.seed)  # the same in every process: the ranks share base noise
    x, y, true_w = make_data(args.num_data, args.dim, dtype)
    model = logistic_regression(args.num_data)
    guide = AutoRealNVP(model, num_layers=args.num_layers)
    svi = SVIModule(model, guide, x, y, lr=args.lr)
    trainer = make_trainer(args, callbacks)
    processes = args.devices * args.num_nodes
    # Default: each rank's whole shard at every step (one block per rank and epoch).
    # Blocks are slices: DataLoader(TensorDataset(x, y), batch_size=...) would stack the
    # rows of every batch one by one, slower than the model on 10,000 rows.
    batch_size = args.batch_size or args.num_data // processes
    blocks = Blocks(x, y, block_size=batch_size)
    loader = DataLoader(blocks, batch_size=None, shuffle=args.batch_size is not None)
    start = time.perf_counter()
    trainer.fit(svi, loader, ckpt_path=args.resume)
    seconds = time.perf_counter() - start
    w_median = guide.median()["w"].cpu()
    result = {
        "world_size": trainer.world_size,
        "global_step": trainer.global_step,
        "losses": svi.losses,
        "steps_per_s": len(svi.losses) / seconds,
        "w_error": (w_median - true_w).abs().max().item(),
    }
    if trainer.is_global_zero:
        (Path(args.out_dir) / "result.json").write_text(json.dumps(result))
        print(
            f"{trainer.world_size} process(es), N = {args.num_data}, batches of {batch_size} "
            f"per rank, step {trainer.global_step}: final loss {svi.losses[-1]:.1f}, "
            f"{result['steps_per_s']:.1f} steps/s, "
            f"max |median(w) - true w| = {result['w_error']:.3f}"
        )
    return result


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-steps", type=int, default=1000)
    parser.add_argument("--num-data", type=int, default=20_000)
    parser.add_argument("--dim", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=None, help="per rank; default all")
    parser.add_argument("--num-layers", type=int, default=4)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--float64", action="store_true")
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--devices", type=int, default=1, help="processes per node")
    parser.add_argument("--num-nodes", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--checkpoint-every", type=int, default=500, help="steps")
    parser.add_argument("--resume", default=None, help="a checkpoint to continue from")
    parser.add_argument("--out-dir", default="out/lightning", help="checkpoints, logs, result")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True)
    return parser.parse_args(argv)


if __name__ == "__main__":
    main(parse_args())

"""RealNVP on scikit-learn's 8x8 handwritten digits: test bits/dim against two baselines.

Pixels take 17 levels (0..16). They are dequantised, ``y = (x + u) / 17``, and modelled
in logit space, ``w = logit(a + (1 - 2a) y)`` with ``a = 0.05`` as in the RealNVP paper;
every density below is a density of ``y`` (the logit's Jacobian included), so its
bits/dim bound the discrete code length. The baselines are fitted to the same ``w``:
a diagonal Gaussian (closed form) and a full-covariance Gaussian mixture (scikit-learn).
The flow is the paper's image architecture (``--architecture multiscale``: checkerboard
and channel masks, a squeeze, half the channels factored out, residual convolutional
conditioners) or the plain vector RealNVP on the 64 pixels (``--architecture vector``).

    python examples/digits.py --samples digits_samples.png
"""

from __future__ import annotations

import argparse
import math

import pyro.distributions as dist
import torch
from torch.distributions.transforms import AffineTransform, ComposeTransform, SigmoidTransform

from pyro_realnvp import RealNVP, multiscale_realnvp
from pyro_realnvp.density import bits_per_dim, dequantize, fit_density, flow_distribution

LEVELS, ALPHA = 17, 0.05


def load_digits(seed: int, test_fraction: float = 0.2) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer pixel arrays ``(N, 64)``, shuffled and split into train and test."""
    try:
        from sklearn.datasets import load_digits as sklearn_digits
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the digits example needs scikit-learn: pip install '.[examples]'"
        ) from error
    pixels = torch.as_tensor(sklearn_digits().data, dtype=torch.long)
    order = torch.randperm(pixels.shape[0], generator=torch.Generator().manual_seed(seed))
    split = int(pixels.shape[0] * (1 - test_fraction))
    return pixels[order[:split]], pixels[order[split:]]


def from_logits() -> ComposeTransform:
    """``w -> y``: the inverse of the logit preprocessing, as transforms Pyro can score."""
    return ComposeTransform(
        [SigmoidTransform(), AffineTransform(-ALPHA / (1 - 2 * ALPHA), 1 / (1 - 2 * ALPHA))]
    )


def logit_space_log_prob(log_q_w, w: torch.Tensor) -> torch.Tensor:
    """``log q(y) = log q_w(w) - log|dy/dw|`` for a density ``q_w`` given on logits."""
    transform = from_logits()
    return log_q_w(w) - transform.log_abs_det_jacobian(w, transform(w)).sum(-1)


def gmm_log_prob(w_train: torch.Tensor, components: int, seed: int):
    from sklearn.mixture import GaussianMixture

    gmm = GaussianMixture(components, reg_covar=1e-2, random_state=seed)
    gmm.fit(w_train.double().numpy())
    return lambda w: torch.as_tensor(gmm.score_samples(w.double().numpy()), dtype=w.dtype)


def main(args: argparse.Namespace) -> dict[str, float]:
    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    train_pixels, test_pixels = load_digits(args.seed)
    # A tenth of the training images is held out for early stopping.
    num_valid = len(train_pixels) // 10
    valid_pixels, train_pixels = train_pixels[:num_valid], train_pixels[num_valid:]
    train = dequantize(train_pixels, LEVELS, generator=generator)
    valid = dequantize(valid_pixels, LEVELS, generator=generator)
    test = dequantize(test_pixels, LEVELS, generator=generator)
    to_y = from_logits()
    w_train, w_test = to_y.inv(train), to_y.inv(test)

    dim = train.shape[-1]
    flow = make_flow(args, dim)
    # Start the flow's base at the data's per-pixel logit mean and scale.
    standardize = AffineTransform(w_train.mean(0), w_train.std(0), event_dim=1)
    density = flow_distribution(flow, standardize, to_y)
    fit_density(
        density,
        train,
        num_steps=args.num_steps,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        valid_data=valid,
        progress=args.progress,
        generator=generator,
    )
    diagonal = dist.Normal(w_train.mean(0), w_train.std(0)).to_event(1)
    with torch.no_grad():
        log_q = {
            "realnvp": density.log_prob(test),
            "diagonal_gaussian": logit_space_log_prob(diagonal.log_prob, w_test),
            f"gmm_{args.components}": logit_space_log_prob(
                gmm_log_prob(w_train, args.components, args.seed), w_test
            ),
        }
    results = {
        f"{name}_bits_per_dim": float(bits_per_dim(value, dim, LEVELS).mean())
        for name, value in log_q.items()
    }
    print(f"8x8 digits, {test.shape[0]} test images, bits/dim (uniform: {math.log2(LEVELS):.3f})")
    for name, value in results.items():
        print(f"  {name:32s} {value:.3f}")
    if args.samples:
        save_grid(density, args.samples)
        print(f"  saved {args.samples}")
    return results


def make_flow(args: argparse.Namespace, dim: int) -> RealNVP:
    if args.architecture == "multiscale":
        return multiscale_realnvp(
            (1, 8, 8), hidden_channels=args.hidden_channels, num_blocks=args.num_blocks
        )
    return RealNVP(dim, args.num_layers, (args.hidden, args.hidden), output_gain=1.0)


def save_grid(density, path: str, rows: int = 8, zoom: int = 4) -> None:
    """Save ``rows x rows`` samples as one PNG, each pixel drawn ``zoom`` times wider."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with torch.no_grad():
        images = density.sample((rows * rows,)).clamp(0, 1).reshape(rows, rows, 8, 8)
    grid = images.permute(0, 2, 1, 3).reshape(rows * 8, rows * 8)
    grid = grid.repeat_interleave(zoom, 0).repeat_interleave(zoom, 1)
    plt.imsave(path, grid.numpy(), cmap="gray_r", vmin=0, vmax=1)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-steps", type=int, default=1500)
    parser.add_argument("--architecture", choices=("multiscale", "vector"), default="multiscale")
    parser.add_argument("--hidden-channels", type=int, default=32, help="multiscale width")
    parser.add_argument("--num-blocks", type=int, default=2, help="multiscale residual blocks")
    parser.add_argument("--num-layers", type=int, default=8, help="vector flow couplings")
    parser.add_argument("--hidden", type=int, default=256, help="vector flow width")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--weight-decay", type=float, default=1e-5)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--components", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--samples", default=None, help="save an 8x8 grid of samples as PNG")
    parser.add_argument("--no-progress", dest="progress", action="store_false")
    return parser.parse_args(argv)


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(parse_args())

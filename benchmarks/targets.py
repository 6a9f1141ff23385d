"""Targets with exact truth: ordinary Pyro models whose posterior can be sampled exactly.

Every model here is vectorizable (latents carry any leading particle dimensions, no
plates), so Pyro can draw many particles at once (``max_plate_nesting=0``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import pyro
import pyro.distributions as dist
import torch
from torch import Tensor

__all__ = ["EXACT_TARGETS", "Target", "banana", "correlated_gaussian", "funnel", "linreg_nig"]


@dataclass(frozen=True)
class Target:
    """A model, its data, and what is known about its posterior.

    Args:
        name: Row label in the tables.
        model: Pyro model, called as ``model(*args)``.
        args: Data passed to the model.
        columns: ``(site, size)`` pairs, in the column order of the reference draws;
            guide draws of these sites are flattened in the same order.
        reference: Two independent sets of exact or reference draws, ``(n, D)`` each: the
            first is compared with the guide, the pair gives the sampling-noise floor;
            ``None`` where no reference exists (then only the ELBO and k-hat are read).
        ref_mean: Posterior mean of each column (``None`` without a reference).
        ref_sd: Posterior standard deviation of each column (``None`` without a reference).
        log_z: Log evidence where known exactly, else ``None``.
        max_plate_nesting: The model's plates, for Pyro's vectorized draws (0: none).
    """

    name: str
    model: Callable
    args: tuple
    columns: tuple[tuple[str, int], ...]
    reference: tuple[Tensor, Tensor] | None
    ref_mean: Tensor | None
    ref_sd: Tensor | None
    log_z: float | None = None
    notes: str = field(default="", compare=False)
    max_plate_nesting: int = 0

    @property
    def dim(self) -> int:
        return sum(size for _, size in self.columns)


def _pairs(sampler: Callable[[int, torch.Generator], Tensor], num: int, seed: int):
    generator = torch.Generator().manual_seed(seed)
    return sampler(num, generator), sampler(num, generator)


def funnel_model(dim: int) -> None:
    v = pyro.sample("v", dist.Normal(0.0, 3.0))
    scale = torch.exp(v / 2)[..., None].expand(v.shape + (dim - 1,))
    pyro.sample("x", dist.Normal(0.0, scale).to_event(1))


def funnel(dim: int = 10, num_draws: int = 4000, seed: int = 0) -> Target:
    r"""Neal's funnel, :math:`v \sim N(0, 3^2)`, :math:`x_i \mid v \sim N(0, e^{v})`."""

    def sample(num, generator):
        v = 3.0 * torch.randn(num, 1, generator=generator)
        return torch.cat([v, torch.exp(v / 2) * torch.randn(num, dim - 1, generator=generator)], 1)

    # sd(x_i)^2 = E[e^v] = e^{9/2}: analytic, since sample sds of x are heavy-tailed.
    sd = torch.cat([torch.tensor([3.0]), torch.full((dim - 1,), math.exp(9 / 4))])
    return Target(
        f"funnel_d{dim}",
        funnel_model,
        (dim,),
        (("v", 1), ("x", dim - 1)),
        _pairs(sample, num_draws, seed),
        torch.zeros(dim),
        sd,
        log_z=0.0,
    )


def banana_model(dim: int, twist: float) -> None:
    x1 = pyro.sample("x1", dist.Normal(0.0, 10.0))
    pyro.sample("x2", dist.Normal(twist * (x1**2 - 100.0), 1.0))
    if dim > 2:
        pyro.sample("rest", dist.Normal(0.0, 1.0).expand([dim - 2]).to_event(1))


def banana(dim: int = 2, twist: float = 0.1, num_draws: int = 4000, seed: int = 0) -> Target:
    r"""Haario's twisted Gaussian: :math:`x_1 \sim N(0, 10^2)`,
    :math:`x_2 \mid x_1 \sim N(b(x_1^2 - 100), 1)`, the rest :math:`N(0, 1)`."""

    def sample(num, generator):
        z = torch.randn(num, dim, generator=generator)
        x1 = 10.0 * z[:, :1]
        x2 = z[:, 1:2] + twist * (x1**2 - 100.0)
        return torch.cat([x1, x2, z[:, 2:]], 1)

    # Var(x2) = 1 + b^2 Var(x1^2) = 1 + 2 b^2 10^4.
    sd = torch.ones(dim)
    sd[0], sd[1] = 10.0, math.sqrt(1 + 2 * twist**2 * 1e4)
    columns = (("x1", 1), ("x2", 1)) + ((("rest", dim - 2),) if dim > 2 else ())
    return Target(
        f"banana_d{dim}",
        banana_model,
        (dim, twist),
        columns,
        _pairs(sample, num_draws, seed),
        torch.zeros(dim),
        sd,
        log_z=0.0,
    )


def correlated_gaussian_model(cov: Tensor) -> None:
    pyro.sample("x", dist.MultivariateNormal(torch.zeros(cov.shape[-1]), cov))


def correlated_gaussian(
    dim: int = 20, rho: float = 0.9, num_draws: int = 4000, seed: int = 0
) -> Target:
    r"""Equicorrelated Gaussian, :math:`\Sigma = (1-\rho) I + \rho \mathbf 1 \mathbf 1^\top`."""
    cov = (1 - rho) * torch.eye(dim) + rho * torch.ones(dim, dim)
    tril = torch.linalg.cholesky(cov)

    def sample(num, generator):
        return torch.randn(num, dim, generator=generator) @ tril.T

    return Target(
        f"corr_gauss_d{dim}",
        correlated_gaussian_model,
        (cov,),
        (("x", dim),),
        _pairs(sample, num_draws, seed),
        torch.zeros(dim),
        torch.ones(dim),
        log_z=0.0,
    )


def linreg_nig_model(X: Tensor, y: Tensor, a0: float, b0: float) -> None:
    sigma2 = pyro.sample("sigma2", dist.InverseGamma(a0, b0))
    scale = sigma2.sqrt()[..., None]
    w = pyro.sample("w", dist.Normal(0.0, scale.expand(sigma2.shape + (X.shape[1],))).to_event(1))
    pyro.sample("y", dist.Normal(w @ X.T, scale).to_event(1), obs=y)


def linreg_nig(
    num_obs: int = 50, num_features: int = 5, num_draws: int = 4000, seed: int = 0
) -> Target:
    r"""Conjugate regression: :math:`\sigma^2 \sim IG(a_0, b_0)`,
    :math:`w \mid \sigma^2 \sim N(0, \sigma^2 I)`, :math:`y \sim N(Xw, \sigma^2 I)`."""
    a0, b0 = 3.0, 1.0
    data = torch.Generator().manual_seed(1234)
    X = torch.randn(num_obs, num_features, generator=data, dtype=torch.float64)
    w_true = torch.linspace(-1.0, 1.0, num_features, dtype=torch.float64)
    y = X @ w_true + 0.5 * torch.randn(num_obs, generator=data, dtype=torch.float64)
    precision = torch.eye(num_features, dtype=torch.float64) + X.T @ X
    cov_n = torch.linalg.inv(precision)
    m_n = cov_n @ X.T @ y
    a_n = a0 + num_obs / 2
    b_n = b0 + 0.5 * float(y @ y - m_n @ precision @ m_n)
    log_z = (
        -0.5 * num_obs * math.log(2 * math.pi)
        + 0.5 * float(torch.logdet(cov_n))
        + a0 * math.log(b0)
        - a_n * math.log(b_n)
        + math.lgamma(a_n)
        - math.lgamma(a0)
    )
    tril_n = torch.linalg.cholesky(cov_n)

    def sample(num, generator):
        sigma2 = 1 / torch.distributions.Gamma(a_n, b_n).sample((num, 1))
        eps = torch.randn(num, num_features, generator=generator, dtype=torch.float64)
        return torch.cat([sigma2, m_n + sigma2.sqrt() * eps @ tril_n.T], 1).float()

    torch.manual_seed(seed)  # Gamma.sample takes no generator
    mean = torch.cat([torch.tensor([b_n / (a_n - 1)]), m_n.float()])
    sd = torch.cat(
        [
            torch.tensor([b_n / ((a_n - 1) * math.sqrt(a_n - 2))]),
            (b_n / (a_n - 1) * cov_n.diagonal()).sqrt().float(),
        ]
    )
    return Target(
        "linreg_nig",
        linreg_nig_model,
        (X.float(), y.float(), a0, b0),
        (("sigma2", 1), ("w", num_features)),
        _pairs(sample, num_draws, seed),
        mean.float(),
        sd.float(),
        log_z=log_z,
    )


#: Constructors of the exact-truth targets, by row label.
EXACT_TARGETS: dict[str, Callable[..., Target]] = {
    "funnel_d10": lambda **kw: funnel(10, **kw),
    "banana_d2": lambda **kw: banana(2, **kw),
    "banana_d8": lambda **kw: banana(8, **kw),
    "corr_gauss_d20": lambda **kw: correlated_gaussian(20, **kw),
    "linreg_nig": lambda **kw: linreg_nig(**kw),
}

"""Models from Pyro's own examples, as written there.

``PYRO_EXAMPLES`` (eight schools) is the accuracy bench's: no reference draws, so only the
ELBO and k-hat are read, rivals at the particles ``fit`` gives AutoRealNVP.
``OTHER_PYRO_EXAMPLES`` are the others issue 30 times (``benchmarks.time_to_accuracy``):
baseball, the regression tutorial's model, ``lkj.py`` and NeuTra's banana (exact: log Z = 0).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from pyro.nn import PyroModule, PyroSample
from torch import Tensor, nn

from .targets import Target

__all__ = ["OTHER_PYRO_EXAMPLES", "PYRO_EXAMPLES", "pyro_eight_schools"]

#: Rubin's eight schools: estimated effects and their standard errors.
_EIGHT_SCHOOLS_Y = (28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0)
_EIGHT_SCHOOLS_SIGMA = (15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0)


def _no_reference(name: str, model: Callable, args: tuple, columns, notes: str,
                  plates: int = 1) -> Target:  # fmt: skip
    return Target(name=name, model=model, args=args, columns=columns, reference=None,
                  ref_mean=None, ref_sd=None, notes=notes, max_plate_nesting=plates)  # fmt: skip


def pyro_eight_schools_model(data: Tensor) -> None:
    """Pyro's ``examples/eight_schools/svi.py`` model: ``mu`` and ``tau`` are drawn inside
    the schools' plate, so each school has its own (24 latents, not 10)."""
    y, sigma = data[:, 0], data[:, 1]
    schools = len(y)
    with pyro.plate("data", schools):
        eta = pyro.sample("eta", dist.Normal(torch.zeros(schools), torch.ones(schools)))
        mu = pyro.sample("mu", dist.Normal(torch.zeros(1), 10 * torch.ones(1)))
        tau = pyro.sample("tau", dist.HalfCauchy(scale=25 * torch.ones(1)))
        pyro.sample("obs", dist.Normal(mu + tau * eta, sigma), obs=y)


def pyro_eight_schools() -> Target:
    """Pyro's eight schools example as a target without a reference."""
    data = torch.stack([torch.tensor(_EIGHT_SCHOOLS_Y), torch.tensor(_EIGHT_SCHOOLS_SIGMA)], 1)
    return _no_reference(
        "pyro_eight_schools",
        pyro_eight_schools_model,
        (data,),
        (("eta", 8), ("mu", 8), ("tau", 8)),
        "Pyro's examples/eight_schools/svi.py model, 24 latents; no reference",
    )


#: Row label -> the target, for ``benchmarks.accuracy --examples``.
PYRO_EXAMPLES: dict[str, Callable[[], Target]] = {"pyro_eight_schools": pyro_eight_schools}


#: Efron and Morris's 18 players: hits in their first 45 at-bats of 1970 (Pyro's
#: ``examples/baseball.py`` reads them from EfronMorrisBB.txt).
_BASEBALL_HITS = (18, 17, 16, 15, 14, 14, 13, 12, 11, 11, 10, 10, 10, 10, 10, 9, 8, 7)


def baseball_model(at_bats: Tensor, hits: Tensor) -> None:
    """``examples/baseball.py``'s ``partially_pooled_with_logit``."""
    loc = pyro.sample("loc", dist.Normal(-1.0, 1.0))
    scale = pyro.sample("scale", dist.HalfCauchy(scale=1.0))
    with pyro.plate("num_players", at_bats.shape[0]):
        alpha = pyro.sample("alpha", dist.Normal(loc, scale))
        pyro.sample("obs", dist.Binomial(at_bats, logits=alpha), obs=hits)


def pyro_baseball() -> Target:
    hits = torch.tensor(_BASEBALL_HITS, dtype=torch.float)
    return _no_reference(
        "pyro_baseball",
        baseball_model,
        (torch.full_like(hits, 45.0), hits),
        (("loc", 1), ("scale", 1), ("alpha", 18)),
        "Pyro's examples/baseball.py, partially pooled, logits; 20 latents",
    )


class RegressionTutorial(PyroModule):
    """The model of Pyro's tutorial "Bayesian Regression - Introduction (Part 1)", as
    written there: a ``PyroModule[nn.Linear]`` with ``N(0, 1)`` weights and a ``N(0, 10)``
    bias, ``sigma ~ U(0, 10)``."""

    def __init__(self, in_features: int = 3, out_features: int = 1) -> None:
        super().__init__()
        self.linear = PyroModule[nn.Linear](in_features, out_features)
        self.linear.weight = PyroSample(
            dist.Normal(0.0, 1.0).expand([out_features, in_features]).to_event(2)
        )
        self.linear.bias = PyroSample(dist.Normal(0.0, 10.0).expand([out_features]).to_event(1))

    def forward(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        sigma = pyro.sample("sigma", dist.Uniform(0.0, 10.0))
        mean = self.linear(x).squeeze(-1)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("obs", dist.Normal(mean, sigma), obs=y)
        return mean


def pyro_regression_tutorial(num_rows: int = 170, seed: int = 0) -> Target:
    """The tutorial's model on data of its design, drawn here: its data set (log GDP
    against terrain ruggedness, in or out of Africa, 170 countries) is a download this
    machine cannot make. Features: in Africa (a third), ruggedness, their product."""
    generator = torch.Generator().manual_seed(seed)
    africa = (torch.rand(num_rows, generator=generator) < 1 / 3).float()
    rugged = -torch.log(torch.rand(num_rows, generator=generator)) * 1.3
    x = torch.stack([africa, rugged, africa * rugged], -1)
    noise = torch.randn(num_rows, generator=generator)
    y = 9.2 - 1.9 * africa - 0.2 * rugged + 0.4 * africa * rugged + 0.95 * noise
    return _no_reference("pyro_regression_tutorial", RegressionTutorial(), (x, y),
                         (("linear.weight", 3), ("linear.bias", 1), ("sigma", 1)),
                         "the model of Pyro's regression tutorial (a PyroModule) on drawn "
                         "data of its design, 170 rows, 3 features; 5 latents")  # fmt: skip


def lkj_model(y: Tensor) -> None:
    """``examples/lkj.py``'s model: HalfCauchy variances, an LKJ correlation factor (the
    variances one event, which SVI needs and the example's NUTS did not)."""
    d = y.shape[1]
    options = dict(dtype=y.dtype, device=y.device)
    # The example's HalfCauchy has no .to_event(1): NUTS lets that pass, SVI's shape
    # check does not, so here it is one event of d variances, as SVI needs.
    theta = pyro.sample("theta", dist.HalfCauchy(torch.ones(d, **options)).to_event(1))
    L_omega = pyro.sample("L_omega", dist.LKJCholesky(d, torch.ones((), **options)))
    # The example's torch.mm, batched as its comment suggests for SVI.
    L_Omega = torch.matmul(theta.sqrt().diag_embed(), L_omega)
    with pyro.plate("observations", y.shape[0]):
        pyro.sample("obs", dist.MultivariateNormal(torch.zeros(d, **options), scale_tril=L_Omega),
                    obs=y)  # fmt: skip


def pyro_lkj(num_rows: int = 500, dim: int = 5, seed: int = 0) -> Target:
    y = torch.randn(num_rows, dim, generator=torch.Generator().manual_seed(seed))
    return _no_reference("pyro_lkj", lkj_model, (y.double(),),
                         (("theta", dim), ("L_omega", dim * dim)),
                         f"Pyro's examples/lkj.py, {num_rows} x {dim} standard normal data, "
                         "float64, 15 latents")  # fmt: skip


class BananaShaped(dist.TorchDistribution):
    r"""NeuTra's banana (Pyro's ``examples/neutra.py``): :math:`u \sim N(0, [[1, \rho],
    [\rho, 1]])`, :math:`x = a u_0`, :math:`y = u_1 / a + b (u_0^2 + a^2)`; unit Jacobian,
    so its density is normalised (log Z = 0)."""

    support = constraints.real_vector

    def __init__(self, a: float, b: float, rho: float = 0.9) -> None:
        self.a, self.b, self.rho = a, b, rho
        covariance = torch.tensor([[1.0, rho], [rho, 1.0]])
        self.mvn = dist.MultivariateNormal(torch.zeros(2), covariance_matrix=covariance)
        super().__init__(event_shape=(2,))

    def sample(self, sample_shape=()) -> Tensor:
        return self._from_u(self.mvn.sample(sample_shape))

    def _from_u(self, u: Tensor) -> Tensor:
        u0, u1 = u[..., 0], u[..., 1]
        return torch.stack([self.a * u0, u1 / self.a + self.b * (u0**2 + self.a**2)], -1)

    def log_prob(self, value: Tensor) -> Tensor:
        u0 = value[..., 0] / self.a
        u1 = (value[..., 1] - self.b * (u0**2 + self.a**2)) * self.a
        return self.mvn.log_prob(torch.stack([u0, u1], -1))


def neutra_banana_model(a: float, b: float) -> None:
    pyro.sample("x", BananaShaped(a, b))


def pyro_neutra_banana(a: float = 1.15, b: float = 1.0, num_draws: int = 4000,
                       seed: int = 0) -> Target:  # fmt: skip
    """``examples/neutra.py``'s model at its defaults, exact: draws and log Z = 0."""
    banana = BananaShaped(a, b)
    generator = torch.Generator().manual_seed(seed)
    chol = torch.linalg.cholesky(banana.mvn.covariance_matrix)
    first, second = (banana._from_u(torch.randn(num_draws, 2, generator=generator) @ chol.T)
                     for _ in range(2))  # fmt: skip
    # x = a u0: sd a; y: Var(u1 / a + b u0^2) = 1/a^2 + 2 b^2 + 2 rho b * 0 (odd moments vanish).
    sd = torch.tensor([a, math.sqrt(1 / a**2 + 2 * b**2)])
    mean = torch.tensor([0.0, b * (1 + a**2)])
    return Target("pyro_neutra_banana", neutra_banana_model, (a, b), (("x", 2),),
                  (first, second), mean, sd, log_z=0.0,
                  notes="Pyro's examples/neutra.py banana, a = 1.15, b = 1; exact")  # fmt: skip


#: Pyro's other examples issue 30 times, by row label.
OTHER_PYRO_EXAMPLES: dict[str, Callable[[], Target]] = {
    "pyro_baseball": pyro_baseball,
    "pyro_regression_tutorial": pyro_regression_tutorial,
    "pyro_lkj": pyro_lkj,
    "pyro_neutra_banana": pyro_neutra_banana,
}

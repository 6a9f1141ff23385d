"""posteriordb's posteriors of dynamics in Pyro: two hidden Markov models (a Gaussian
one and a basketball drive model), the Lotka-Volterra ODE on the lynx-hare data, and a
Gaussian-process regression.

Each model keeps the Stan program's priors and constraints; latents carry any leading
particle dimensions (no plates), so ``max_plate_nesting=0``. The HMMs' hidden states are
summed out by the forward algorithm, as in Stan, into one ``pyro.factor``; the ODE is
solved by ``torchdiffeq`` (imported when the model first runs) on a fixed grid, so the
model records as one graph for the fast path.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from torch import Tensor

from .common import Spec, as_tensor, flat

__all__ = [
    "SPECS",
    "forward_algorithm",
    "gp_regr",
    "hmm_drive",
    "hmm_example",
    "lotka_volterra",
]

#: Lotka-Volterra's RK4 step, in the ODE's time units (the data's times are whole numbers,
#: so each is a grid point and no output is interpolated).
LV_STEP = 0.25
#: The log population above which the ODE's right-hand side stops growing (far tails only).
LV_LOG_CAP = 30.0


def _log_matmul(a: Tensor, b: Tensor) -> Tensor:
    """``log(exp(a) @ exp(b))`` over the last two dimensions, without leaving log space."""
    return torch.logsumexp(a[..., :, :, None] + b[..., None, :, :], dim=-2)


def forward_algorithm(log_theta: Tensor, log_emission: Tensor) -> Tensor:
    """Stan's forward algorithm: the log-likelihood with the hidden states summed out.

    ``gamma[1, k] = log_emission[1, k]`` and ``gamma[t, k] = log_sum_exp_j(gamma[t-1, j]
    + log_theta[j, k]) + log_emission[t, k]``, then ``log_sum_exp(gamma[N])``. Each step
    is a log-space product with ``M[t] = log_theta + log_emission[t]`` (``j`` by ``k``),
    so the recursion is the product ``gamma[1] M[2] ... M[N]``, taken here pairwise (a
    tree of ``log2 N`` levels rather than ``N`` steps: the same sum, associated otherwise).
    ``log_theta``: ``(..., K, K)``; ``log_emission``: ``(..., N, K)``; returns ``(...)``.
    """
    steps = log_theta[..., None, :, :] + log_emission[..., 1:, None, :]
    while steps.shape[-3] > 1:
        paired = _log_matmul(steps[..., 0:-1:2, :, :], steps[..., 1::2, :, :])
        odd = steps[..., steps.shape[-3] - steps.shape[-3] % 2 :, :, :]
        steps = torch.cat([paired, odd], dim=-3)
    gamma = log_emission[..., 0, :]
    if steps.shape[-3]:
        gamma = torch.logsumexp(gamma[..., :, None] + steps[..., 0, :, :], dim=-2)
    return gamma.logsumexp(-1)


def hmm_example(y: Tensor, K: int) -> None:
    """Two states, Gaussian emissions of unit scale; the positive, ordered means have each
    their own normal prior. Stan's flat prior on the transition simplexes is
    ``Dirichlet(1, ..., 1)``, whose density is constant (``flat(constraints.simplex)``
    would be the same density, but its ``sample`` gives ``K + 1`` entries, not ``K``)."""
    uniform = dist.Dirichlet(torch.ones(K))
    theta1 = pyro.sample("theta1", uniform)
    theta2 = pyro.sample("theta2", uniform)
    mu = pyro.sample("mu", flat(constraints.positive_ordered_vector, event_shape=(K,)))
    pyro.factor("mu_prior", dist.Normal(torch.tensor([3.0, 10.0]), 1.0).log_prob(mu).sum(-1))
    log_theta = torch.stack([theta1, theta2], dim=-2).log()
    log_emission = dist.Normal(mu[..., None, :], 1.0).log_prob(y[:, None])
    pyro.factor("y", forward_algorithm(log_theta, log_emission))


def hmm_drive(u: Tensor, v: Tensor, alpha: Tensor) -> None:
    """A basketball drive: two states whose exponential emissions (rates ``phi`` of
    1/speed, ``lambda`` of the distance to the hoop) are positive and ordered."""
    theta1 = pyro.sample("theta1", dist.Dirichlet(alpha[0]))
    theta2 = pyro.sample("theta2", dist.Dirichlet(alpha[1]))
    K = alpha.shape[0]
    phi = pyro.sample("phi", flat(constraints.positive_ordered_vector, event_shape=(K,)))
    lam = pyro.sample("lambda", flat(constraints.positive_ordered_vector, event_shape=(K,)))
    prior = dist.Normal(torch.tensor([0.0, 3.0]), 1.0)
    pyro.factor("phi_prior", prior.log_prob(phi).sum(-1))
    pyro.factor("lambda_prior", prior.log_prob(lam).sum(-1))
    log_theta = torch.stack([theta1, theta2], dim=-2).log()
    log_emission = dist.Exponential(phi[..., None, :]).log_prob(u[:, None])
    log_emission = log_emission + dist.Exponential(lam[..., None, :]).log_prob(v[:, None])
    pyro.factor("y", forward_algorithm(log_theta, log_emission))


def _lotka_volterra_rhs(theta: Tensor) -> Callable[[Tensor, Tensor], Tensor]:
    """Stan's ``dz_dt`` for ``theta = (alpha, beta, gamma, delta)``, ``du/dt = (alpha -
    beta v) u`` and ``dv/dt = (-gamma + delta u) v``, in log populations: ``d log z / dt =
    rate + coupling * z.flip(-1)``, a few whole-state operations per call (the RK4 loop is
    op-bound). In logs a coarse step cannot take a population below zero, where z's own
    RK4 at step 0.25 did on a guide's far draw and the model had no log-density."""
    signs = theta.new_tensor([1.0, -1.0])
    rate, coupling = theta[..., 0::2] * signs, theta[..., 1::2] * -signs

    def rhs(t: Tensor, log_z: Tensor) -> Tensor:
        # Populations beyond e^LV_LOG_CAP (the data's are below 100) only on a guide's
        # far draw: capped there, its log-density is vanishing but finite, where exp's
        # overflow made it NaN and a 32-particle step of Pyro's ELBO failed.
        return rate + coupling * log_z.flip(-1).clamp(max=LV_LOG_CAP).exp()

    return rhs


def lotka_volterra(ts: Tensor, y_init: Tensor, y: Tensor) -> None:
    """Predator-prey populations observed with lognormal error.

    Stan solves the ODE with RK45 (rtol 1e-5, atol 1e-3); here it is classical RK4 in the
    log populations on a fixed grid of step ``LV_STEP`` = 0.25 (no step-size control,
    whose branches on the state a captured graph cannot replay), in float64. Against
    scipy's ``solve_ivp`` (rtol 1e-10) at 50 draws across the reference chains, the
    log-density's differences between draws are off by at most 6.4e-3 nats (step 0.125:
    3.8e-4, at twice the cost; the bench fits this model 14 times, so the coarser grid
    halves its largest share).
    ``theta`` has Stan's positive support and its normal prior (truncation constants
    dropped, as Stan's ``~`` drops them).
    """
    from torchdiffeq import odeint

    theta = pyro.sample("theta", flat(constraints.positive, event_shape=(4,)))
    prior = dist.Normal(torch.tensor([1.0, 0.05, 1.0, 0.05]), torch.tensor([0.5, 0.05] * 2))
    pyro.factor("theta_prior", prior.log_prob(theta).sum(-1))
    z_init = pyro.sample("z_init", dist.LogNormal(math.log(10.0), 1.0).expand([2]).to_event(1))
    sigma = pyro.sample("sigma", dist.LogNormal(-1.0, 1.0).expand([2]).to_event(1))
    times = torch.cat([ts.new_zeros(1), ts]).double()
    log_z = odeint(
        _lotka_volterra_rhs(theta.double()),
        z_init.double().log(),
        times,
        method="rk4",
        options={"step_size": LV_STEP},
    )[1:]  # (N, ..., 2): the solution at ts, after the initial value
    log_z = torch.movedim(log_z, 0, -2).to(y.dtype)
    sigma = sigma[..., None, :]
    pyro.sample("y_init", dist.LogNormal(z_init.log(), sigma[..., 0, :]).to_event(1), obs=y_init)
    pyro.sample("y", dist.LogNormal(log_z, sigma).to_event(2), obs=y)


def gp_regr(x: Tensor, y: Tensor) -> None:
    """A zero-mean GP with squared-exponential kernel, marginal normal likelihood; note
    Stan adds ``sigma`` itself (not its square) to the covariance's diagonal."""
    rho = pyro.sample("rho", dist.Gamma(25.0, 4.0))
    alpha = pyro.sample("alpha", dist.HalfNormal(2.0))
    sigma = pyro.sample("sigma", dist.HalfNormal(1.0))
    sq_dist = (x[:, None] - x[None, :]).double() ** 2
    cov = alpha.double()[..., None, None] ** 2 * torch.exp(
        -sq_dist / (2 * rho.double()[..., None, None] ** 2)
    ) + sigma.double()[..., None, None] * torch.eye(len(x), dtype=torch.float64)
    tril = torch.linalg.cholesky(cov).to(y.dtype)
    pyro.sample("y", dist.MultivariateNormal(torch.zeros_like(y), scale_tril=tril), obs=y)


#: Row label -> the translation.
SPECS: dict[str, Spec] = {
    "hmm_example": Spec(
        "hmm_example-hmm_example",
        hmm_example,
        lambda d: (as_tensor(d["y"]), int(d["K"])),
        (("theta1", 2), ("theta2", 2), ("mu", 2)),
    ),
    "hmm_drive_0": Spec(
        "bball_drive_event_0-hmm_drive_0",
        hmm_drive,
        lambda d: (as_tensor(d["u"]), as_tensor(d["v"]), as_tensor(d["alpha"])),
        (("theta1", 2), ("theta2", 2), ("phi", 2), ("lambda", 2)),
    ),
    "lotka_volterra": Spec(
        "hudson_lynx_hare-lotka_volterra",
        lotka_volterra,
        lambda d: (as_tensor(d["ts"]), as_tensor(d["y_init"]), as_tensor(d["y"])),
        (("theta", 4), ("z_init", 2), ("sigma", 2)),
    ),
    "gp_regr": Spec(
        "gp_pois_regr-gp_regr",
        gp_regr,
        lambda d: (as_tensor(d["x"]), as_tensor(d["y"])),
        (("rho", 1), ("alpha", 1), ("sigma", 1)),
    ),
}

"""posteriordb's first eight posteriors in Pyro: eight schools (and its centred form),
an AR(K) series, GARCH(1,1), a Poisson GP, kilpisjarvi's linear trend, a two-component
mixture, and brms' diamonds regression.

Each model keeps the Stan program's priors and constraints; latents carry any leading
particle dimensions (no plates), so ``max_plate_nesting=0``. Stan's implicit flat priors
become :class:`~benchmarks.posteriordb.common.Flat` sites.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from torch import Tensor

from .common import Spec, as_tensor, flat

__all__ = [
    "SPECS",
    "arK",
    "diamonds",
    "eight_schools_centered",
    "eight_schools_noncentered",
    "garch11",
    "gp_pois_regr",
    "kilpisjarvi",
    "low_dim_gauss_mix",
]


def eight_schools_noncentered(y: Tensor, sigma: Tensor) -> None:
    mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = pyro.sample("tau", dist.HalfCauchy(5.0))
    theta_trans = pyro.sample("theta_trans", dist.Normal(0.0, 1.0).expand([len(y)]).to_event(1))
    theta = pyro.deterministic("theta", theta_trans * tau[..., None] + mu[..., None], event_dim=1)
    pyro.sample("y", dist.Normal(theta, sigma).to_event(1), obs=y)


def eight_schools_centered(y: Tensor, sigma: Tensor) -> None:
    """The same priors as the non-centred model, with ``theta ~ normal(mu, tau)`` directly."""
    mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = pyro.sample("tau", dist.HalfCauchy(5.0))
    prior = dist.Normal(mu[..., None], tau[..., None]).expand(mu.shape + (len(y),))
    theta = pyro.sample("theta", prior.to_event(1))
    pyro.sample("y", dist.Normal(theta, sigma).to_event(1), obs=y)


def arK(y: Tensor, lags: Tensor) -> None:
    """``lags[i, k] = y[K + i - k - 1]``: the regressors of ``y[K + i]``."""
    num_lags = lags.shape[1]
    alpha = pyro.sample("alpha", dist.Normal(0.0, 10.0))
    beta = pyro.sample("beta", dist.Normal(0.0, 10.0).expand([num_lags]).to_event(1))
    sigma = pyro.sample("sigma", dist.HalfCauchy(2.5))
    mu = alpha[..., None] + beta @ lags.T
    pyro.sample("y", dist.Normal(mu, sigma[..., None]).to_event(1), obs=y[num_lags:])


def garch11(y: Tensor, sigma1: float) -> None:
    """``beta1`` has the dependent bound ``(0, 1 - alpha1)``; Pyro's autoguides fix a site's
    support at set-up, so it is ``beta1 = (1 - alpha1) * beta1_raw`` with a flat
    ``beta1_raw`` on (0, 1) and the Jacobian ``log(1 - alpha1)``, keeping beta1's flat prior.
    """
    mu = pyro.sample("mu", flat(constraints.real))
    alpha0 = pyro.sample("alpha0", flat(constraints.positive))
    alpha1 = pyro.sample("alpha1", flat(constraints.unit_interval))
    beta1_raw = pyro.sample("beta1_raw", flat(constraints.unit_interval))
    beta1 = pyro.deterministic("beta1", (1 - alpha1) * beta1_raw, event_dim=0)
    pyro.factor("beta1_jacobian", torch.log1p(-alpha1))
    # sigma[t]^2 = c[t-1] + beta1 sigma[t-1]^2, c[t] = alpha0 + alpha1 (y[t] - mu)^2, unrolled:
    # sigma[t]^2 = beta1^t sigma1^2 + sum_{j<t} beta1^(t-1-j) c[j], one matmul for all t.
    T = len(y)
    c = alpha0[..., None] + alpha1[..., None] * (y[:-1] - mu[..., None]) ** 2
    t = torch.arange(T, dtype=y.dtype)
    power = t[:, None] - 1 - t[None, :-1]
    # log(beta1) is clamped only where beta1^1 already underflows float32 to 0.
    log_beta1 = torch.log(beta1).clamp(min=-100.0)[..., None, None]
    weights = torch.where(power >= 0, power * log_beta1, -torch.inf).exp()
    sigma2 = (weights @ c[..., None]).squeeze(-1) + (t * log_beta1[..., 0]).exp() * sigma1**2
    pyro.sample("y", dist.Normal(mu[..., None], sigma2.sqrt()).to_event(1), obs=y)


def gp_pois_regr(x: Tensor, k: Tensor) -> None:
    rho = pyro.sample("rho", dist.Gamma(25.0, 4.0))
    alpha = pyro.sample("alpha", dist.HalfNormal(2.0))
    f_tilde = pyro.sample("f_tilde", dist.Normal(0.0, 1.0).expand([len(x)]).to_event(1))
    sq_dist = (x[:, None] - x[None, :]).double() ** 2
    cov = alpha.double()[..., None, None] ** 2 * torch.exp(
        -sq_dist / (2 * rho.double()[..., None, None] ** 2)
    ) + 1e-10 * torch.eye(len(x), dtype=torch.float64)
    # Stan's 1e-10 jitter needs float64 for the Cholesky factor.
    tril = torch.linalg.cholesky(cov)
    f = (tril @ f_tilde.double()[..., None]).squeeze(-1).to(x.dtype)
    f = pyro.deterministic("f", f, event_dim=1)
    pyro.sample("k", dist.Poisson(f.exp()).to_event(1), obs=k)


def kilpisjarvi(
    x: Tensor,
    y: Tensor,
    pmualpha: float,
    psalpha: float,
    pmubeta: float,
    psbeta: float,
) -> None:
    alpha = pyro.sample("alpha", dist.Normal(pmualpha, psalpha))
    beta = pyro.sample("beta", dist.Normal(pmubeta, psbeta))
    sigma = pyro.sample("sigma", flat(constraints.positive))
    mean = alpha[..., None] + beta[..., None] * x
    pyro.sample("y", dist.Normal(mean, sigma[..., None]).to_event(1), obs=y)


def low_dim_gauss_mix(y: Tensor) -> None:
    mu = pyro.sample("mu", flat(constraints.ordered_vector, event_shape=(2,)))
    pyro.factor("mu_prior", dist.Normal(0.0, 2.0).log_prob(mu).sum(-1))
    sigma = pyro.sample("sigma", dist.HalfNormal(2.0).expand([2]).to_event(1))
    theta = pyro.sample("theta", dist.Beta(5.0, 5.0))
    first = theta.log()[..., None] + dist.Normal(mu[..., :1], sigma[..., :1]).log_prob(y)
    second = torch.log1p(-theta)[..., None] + dist.Normal(mu[..., 1:], sigma[..., 1:]).log_prob(y)
    pyro.factor("y", torch.logaddexp(first, second).sum(-1))


def diamonds(Y: Tensor, Xc: Tensor) -> None:
    """brms' model; ``Xc`` is ``X`` without its intercept column, centred (transformed data)."""
    b = pyro.sample("b", dist.Normal(0.0, 1.0).expand([Xc.shape[1]]).to_event(1))
    intercept = pyro.sample("Intercept", dist.StudentT(3.0, 8.0, 10.0))
    sigma = pyro.sample("sigma", dist.FoldedDistribution(dist.StudentT(3.0, 0.0, 10.0)))
    mean = intercept[..., None] + b @ Xc.T
    pyro.sample("Y", dist.Normal(mean, sigma[..., None]).to_event(1), obs=Y)


def _args_eight_schools(data):
    return as_tensor(data["y"]), as_tensor(data["sigma"])


def _args_arK(data):
    y, K = as_tensor(data["y"]), data["K"]
    index = torch.arange(K, data["T"])[:, None] - torch.arange(1, K + 1)[None, :]
    return y, y[index]


def _args_diamonds(data):
    X = torch.tensor(data["X"], dtype=torch.float64)[:, 1:]
    return as_tensor(data["Y"]), (X - X.mean(0)).to(torch.get_default_dtype())


#: Row label -> the translation.
SPECS: dict[str, Spec] = {
    "eight_schools_noncentered": Spec(
        "eight_schools-eight_schools_noncentered",
        eight_schools_noncentered,
        _args_eight_schools,
        (("theta", 8), ("mu", 1), ("tau", 1)),
    ),
    "eight_schools_centered": Spec(
        "eight_schools-eight_schools_noncentered",
        eight_schools_centered,
        _args_eight_schools,
        (("theta", 8), ("mu", 1), ("tau", 1)),
    ),
    "arK": Spec("arK-arK", arK, _args_arK, (("alpha", 1), ("beta", 5), ("sigma", 1))),
    "garch11": Spec(
        "garch-garch11",
        garch11,
        lambda d: (as_tensor(d["y"]), float(d["sigma1"])),
        (("mu", 1), ("alpha0", 1), ("alpha1", 1), ("beta1", 1)),
    ),
    "gp_pois_regr": Spec(
        "gp_pois_regr-gp_pois_regr",
        gp_pois_regr,
        lambda d: (as_tensor(d["x"]), as_tensor(d["k"])),
        (("rho", 1), ("alpha", 1), ("f", 11)),
    ),
    "kilpisjarvi_mod": Spec(
        "kilpisjarvi_mod-kilpisjarvi",
        kilpisjarvi,
        lambda d: (
            as_tensor(d["x"]),
            as_tensor(d["y"]),
            *(float(d[k]) for k in ("pmualpha", "psalpha", "pmubeta", "psbeta")),
        ),
        (("alpha", 1), ("beta", 1), ("sigma", 1)),
    ),
    "low_dim_gauss_mix": Spec(
        "low_dim_gauss_mix-low_dim_gauss_mix",
        low_dim_gauss_mix,
        lambda d: (as_tensor(d["y"]),),
        (("mu", 2), ("sigma", 2), ("theta", 1)),
    ),
    "diamonds": Spec(
        "diamonds-diamonds",
        diamonds,
        _args_diamonds,
        (("b", 24), ("Intercept", 1), ("sigma", 1)),
    ),
}

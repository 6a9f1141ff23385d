"""Stan's log-densities written out by hand (numpy, float64), and the two helpers every
posteriordb translation test uses: a reference draw by site, and the Pyro model's
log-density at given latents. Shared by ``tests/test_benchmarks.py`` and the family test
modules beside it.
"""

import math

import numpy as np
from pyro import poutine

LOG_2PI = math.log(2 * math.pi)


def normal_lpdf(x, mu, sd):
    x, mu, sd = np.broadcast_arrays(*(np.asarray(v, dtype=float) for v in (x, mu, sd)))
    return float(np.sum(-0.5 * ((x - mu) / sd) ** 2 - np.log(sd) - 0.5 * LOG_2PI))


def cauchy_lpdf(x, scale):
    return float(np.sum(-np.log(np.pi * scale * (1 + (np.asarray(x) / scale) ** 2))))


def student_t_lpdf(x, nu, mu, sd):
    z = (np.asarray(x, dtype=float) - mu) / sd
    const = math.lgamma((nu + 1) / 2) - math.lgamma(nu / 2) - 0.5 * math.log(nu * math.pi)
    return float(np.sum(const - math.log(sd) - (nu + 1) / 2 * np.log1p(z**2 / nu)))


def gamma_lpdf(x, shape, rate):
    return shape * math.log(rate) - math.lgamma(shape) + (shape - 1) * math.log(x) - rate * x


def beta_lpdf(x, a, b):
    log_beta = math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)
    return (a - 1) * math.log(x) + (b - 1) * math.log1p(-x) - log_beta


def poisson_log_lpmf(k, log_rate):
    k, log_rate = np.asarray(k, dtype=float), np.asarray(log_rate, dtype=float)
    lgam = np.array([math.lgamma(v + 1) for v in k])
    return float(np.sum(k * log_rate - np.exp(log_rate) - lgam))


def gp_cholesky(x, alpha, rho):
    x = np.asarray(x, dtype=float)
    cov = alpha**2 * np.exp(-((x[:, None] - x[None, :]) ** 2) / (2 * rho**2))
    return np.linalg.cholesky(cov + 1e-10 * np.eye(len(x)))


def draw(target, index):
    """Reference draw ``index`` as ``{site: float64 array or float}``."""
    row, values, start = target.reference[0][index].double().numpy(), {}, 0
    for site, size in target.columns:
        chunk = row[start : start + size]
        values[site] = float(chunk[0]) if size == 1 else chunk
        start += size
    return values


def pyro_log_density(target, latents):
    with poutine.block():
        conditioned = poutine.condition(target.model, data=latents)
        trace = poutine.trace(conditioned).get_trace(*target.args)
    return float(trace.log_prob_sum())


def assert_differences_match(pyro_lp, stan_lp, solver_atol: float = 0.0) -> None:
    """The Pyro and Stan log-densities at the same points agree up to a constant: their
    differences between points match, where the points differ enough to tell;
    ``solver_atol`` allows for a fixed-step ODE solver's own error."""
    pyro_diff, stan_diff = np.diff(pyro_lp), np.diff(stan_lp)
    assert np.abs(stan_diff).max() > 1e-3  # the points differ, so the check has teeth
    # float32 sums of up to thousands of terms: tolerance relative to the log-density's size
    atol = 1e-6 * max(abs(v) for v in stan_lp) + 1e-3 + solver_atol
    np.testing.assert_allclose(pyro_diff, stan_diff, rtol=1e-4, atol=atol)

"""The posteriordb translations of ``benchmarks/posteriordb/dynamics.py``: two HMMs, the
Lotka-Volterra ODE and a GP regression.

Each log-density is compared with the Stan program's model block, written out by hand
below (the forward algorithm as Stan's loops, the ODE by scipy at a tight tolerance),
as differences between reference draws, so constants drop out.
"""

import math

import numpy as np
import pytest
import torch
from pyro import poutine
from scipy.integrate import solve_ivp
from scipy.special import gammaln, logsumexp
from stan_lpdf import (
    LOG_2PI,
    assert_differences_match,
    draw,
    gamma_lpdf,
    normal_lpdf,
    pyro_log_density,
)

from benchmarks.posteriordb import load_data, load_target, posteriordb_root
from benchmarks.posteriordb.dynamics import SPECS, forward_algorithm

pytestmark = pytest.mark.skipif(
    not posteriordb_root().is_dir(), reason="posteriordb reference posteriors not found"
)

NAMES = list(SPECS)


def exponential_lpdf(x, rate):
    return float(np.sum(np.log(rate) - rate * np.asarray(x, dtype=float)))


def lognormal_lpdf(x, mu, sd):
    log_x = np.log(np.asarray(x, dtype=float))
    return normal_lpdf(log_x, mu, sd) - float(np.sum(log_x))


def dirichlet_lpdf(x, alpha):
    x, alpha = np.asarray(x, dtype=float), np.asarray(alpha, dtype=float)
    norm = gammaln(alpha.sum()) - gammaln(alpha).sum()
    return float(norm + np.sum((alpha - 1) * np.log(x)))


def stan_forward(theta, log_emission):
    """Stan's forward algorithm, loop for loop: ``log_emission[t][k]``, ``theta[j][k]``."""
    n, num_states = len(log_emission), len(theta)
    gamma = [list(log_emission[0])]
    for t in range(1, n):
        gamma.append([])
        for k in range(num_states):
            acc = [
                gamma[t - 1][j] + math.log(theta[j][k]) + log_emission[t][k]
                for j in range(num_states)
            ]
            gamma[t].append(logsumexp(acc))
    return logsumexp(gamma[n - 1])


# Stan's model block, term by term, on Stan's parameters (p) and data (d).
def stan_hmm_example(p, d):
    lp = normal_lpdf(p["mu"][0], 3, 1) + normal_lpdf(p["mu"][1], 10, 1)
    emission = [[normal_lpdf(y, mu, 1) for mu in p["mu"]] for y in d["y"]]
    return lp + stan_forward([p["theta1"], p["theta2"]], emission)


def stan_hmm_drive(p, d):
    theta = [p["theta1"], p["theta2"]]
    lp = sum(dirichlet_lpdf(theta[k], d["alpha"][k]) for k in range(2))
    lp += normal_lpdf(p["phi"][0], 0, 1) + normal_lpdf(p["phi"][1], 3, 1)
    lp += normal_lpdf(p["lambda"][0], 0, 1) + normal_lpdf(p["lambda"][1], 3, 1)
    emission = [
        [
            exponential_lpdf(u, phi) + exponential_lpdf(v, lam)
            for phi, lam in zip(p["phi"], p["lambda"], strict=True)
        ]
        for u, v in zip(d["u"], d["v"], strict=True)
    ]
    return lp + stan_forward(theta, emission)


def stan_lotka_volterra(p, d):
    alpha, beta, gamma, delta = p["theta"]

    def dz_dt(t, z):
        return [(alpha - beta * z[1]) * z[0], (-gamma + delta * z[0]) * z[1]]

    solution = solve_ivp(
        dz_dt, (0, d["ts"][-1]), p["z_init"], t_eval=d["ts"], rtol=1e-10, atol=1e-10
    )
    z, y = solution.y.T, np.asarray(d["y"], dtype=float)
    lp = normal_lpdf(p["theta"][[0, 2]], 1, 0.5) + normal_lpdf(p["theta"][[1, 3]], 0.05, 0.05)
    lp += lognormal_lpdf(p["sigma"], -1, 1) + lognormal_lpdf(p["z_init"], math.log(10), 1)
    for k in range(2):
        lp += lognormal_lpdf(d["y_init"][k], math.log(p["z_init"][k]), p["sigma"][k])
        lp += lognormal_lpdf(y[:, k], np.log(z[:, k]), p["sigma"][k])
    return lp


def stan_gp_regr(p, d):
    x = np.asarray(d["x"], dtype=float)
    cov = p["alpha"] ** 2 * np.exp(-((x[:, None] - x[None, :]) ** 2) / (2 * p["rho"] ** 2))
    tril = np.linalg.cholesky(cov + np.diag(np.full(len(x), p["sigma"])))
    white = np.linalg.solve(tril, np.asarray(d["y"], dtype=float))
    likelihood = -0.5 * white @ white - np.log(np.diag(tril)).sum() - 0.5 * len(x) * LOG_2PI
    return (
        gamma_lpdf(p["rho"], 25, 4)
        + normal_lpdf(p["alpha"], 0, 2)
        + normal_lpdf(p["sigma"], 0, 1)
        + likelihood
    )


STAN = {
    "hmm_example": stan_hmm_example,
    "hmm_drive_0": stan_hmm_drive,
    "lotka_volterra": stan_lotka_volterra,
    "gp_regr": stan_gp_regr,
}


def needs_solver(name):
    if name == "lotka_volterra":
        pytest.importorskip("torchdiffeq")


def latents(p):
    """Every Stan parameter of these programs is a latent site of the Pyro model."""
    return {k: torch.as_tensor(v, dtype=torch.float32) for k, v in p.items()}


def test_the_translations_are_the_four_named():
    assert set(STAN) == set(SPECS)


@pytest.mark.parametrize("n", [1, 2, 3, 4, 7, 16])
def test_forward_algorithm_agrees_with_stans_loops(n):
    generator = torch.Generator().manual_seed(n)
    theta = torch.rand(3, 3, generator=generator).softmax(-1).double()
    log_emission = torch.randn(n, 3, generator=generator).double()
    expected = stan_forward(theta.numpy(), log_emission.numpy())
    got = forward_algorithm(theta.log(), log_emission)
    assert float(got) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("name", NAMES, ids=NAMES)
def test_log_density_matches_stan_up_to_a_constant(name):
    needs_solver(name)
    target = load_target(name)
    data = load_data(name)
    points = [draw(target, i) for i in (0, 1234, 4321)]
    pyro_lp = [pyro_log_density(target, latents(p)) for p in points]
    stan_lp = [STAN[name](p, data) for p in points]
    # The RK4 grid's own error, bounded tighter over 50 draws by the test below.
    assert_differences_match(pyro_lp, stan_lp, solver_atol=1e-2 * (name == "lotka_volterra"))


@pytest.mark.parametrize("name", NAMES, ids=NAMES)
def test_model_reproduces_reference_columns_from_its_latents(name):
    """Reference draws are latents the model accepts (support checked), and the model's
    sites then give back the reference columns."""
    needs_solver(name)
    target = load_target(name)
    for index in range(0, 5000, 500):
        with poutine.block():
            conditioned = poutine.condition(target.model, data=latents(draw(target, index)))
            trace = poutine.trace(conditioned).get_trace(*target.args)
        assert math.isfinite(trace.log_prob_sum())
        got = torch.cat([trace.nodes[s]["value"].reshape(-1) for s, _ in target.columns])
        torch.testing.assert_close(got, target.reference[0][index], rtol=1e-4, atol=1e-4)


def batched_log_density(target, values):
    """The model's log-density at a batch of latents, one value per draw: ``(P,)``."""
    with poutine.block():
        trace = poutine.trace(poutine.condition(target.model, data=values)).get_trace(*target.args)
    trace.compute_log_prob()
    terms = [site["log_prob"] for site in trace.nodes.values() if site["type"] == "sample"]
    assert all(term.shape == terms[0].shape for term in terms)
    return sum(terms)


@pytest.mark.parametrize("name", NAMES, ids=NAMES)
def test_a_batch_of_draws_has_the_log_densities_of_each_alone(name):
    needs_solver(name)
    target = load_target(name)
    points = [latents(draw(target, i)) for i in (10, 2000, 3999)]
    batch = {site: torch.stack([p[site] for p in points]) for site in points[0]}
    got = batched_log_density(target, batch)
    assert got.shape == (3,)
    alone = torch.tensor([pyro_log_density(target, p) for p in points])
    torch.testing.assert_close(got, alone, rtol=1e-5, atol=1e-3)


def test_lotka_volterra_fixed_step_is_within_a_hundredth_of_a_nat_of_a_tight_solution():
    """The model's RK4 grid against scipy at rtol 1e-10, over draws across all chains,
    in float64 throughout so that only the solver's error is left (the model's docstring
    gives 6.4e-3 nats at these draws)."""
    pytest.importorskip("torchdiffeq")
    target, data = load_target("lotka_volterra"), load_data("lotka_volterra")
    rows = range(0, 5000, 100)
    points = [draw(target, i) for i in rows]
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        args = SPECS["lotka_volterra"].make_args(data)
        batch = {s: torch.tensor(np.stack([p[s] for p in points])) for s in points[0]}
        with poutine.block():
            conditioned = poutine.condition(target.model, data=batch)
            trace = poutine.trace(conditioned).get_trace(*args)
    finally:
        torch.set_default_dtype(default)
    trace.compute_log_prob()
    pyro_lp = sum(s["log_prob"] for s in trace.nodes.values() if s["type"] == "sample")
    error = pyro_lp.numpy() - np.array([stan_lotka_volterra(p, data) for p in points])
    assert np.ptp(error) < 1e-2

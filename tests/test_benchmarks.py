"""The benchmark runner's smoke mode, its metrics, and the posteriordb translations.

Each translation's log-density is compared with the Stan program's, written out by hand
below (independently of ``benchmarks/posteriordb/classic.py``), as differences between two
reference draws, so constants drop out.
"""

import math
import statistics

import numpy as np
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample
from stan_lpdf import (
    assert_differences_match,
    beta_lpdf,
    cauchy_lpdf,
    draw,
    gamma_lpdf,
    gp_cholesky,
    normal_lpdf,
    poisson_log_lpmf,
    pyro_log_density,
    student_t_lpdf,
)

from benchmarks import accuracy
from benchmarks.guides import ZUKO_GUIDE
from benchmarks.metrics import moment_errors, sliced_w1
from benchmarks.posteriordb import load_data, load_target, posteriordb_root
from benchmarks.posteriordb.classic import SPECS
from benchmarks.pyro_examples import pyro_eight_schools
from benchmarks.zuko_guide import zuko_available

#: Only the tests that read posteriordb's files: the rest run on a clean clone too.
needs_posteriordb = pytest.mark.skipif(
    not posteriordb_root().is_dir(), reason="posteriordb reference posteriors not found"
)


# Stan's model block, term by term, on Stan's parameters (p) and data (d).
def stan_eight_schools_noncentered(p, d):
    theta = p["theta_trans"] * p["tau"] + p["mu"]
    return (
        normal_lpdf(p["theta_trans"], 0, 1)
        + normal_lpdf(d["y"], theta, d["sigma"])
        + normal_lpdf(p["mu"], 0, 5)
        + cauchy_lpdf(p["tau"], 5)
    )


def stan_eight_schools_centered(p, d):
    return (
        normal_lpdf(p["theta"], p["mu"], p["tau"])
        + normal_lpdf(d["y"], p["theta"], d["sigma"])
        + normal_lpdf(p["mu"], 0, 5)
        + cauchy_lpdf(p["tau"], 5)
    )


def stan_arK(p, d):
    lp = normal_lpdf(p["alpha"], 0, 10) + normal_lpdf(p["beta"], 0, 10)
    lp += cauchy_lpdf(p["sigma"], 2.5)
    y, K = d["y"], d["K"]
    for t in range(K, d["T"]):
        mu = p["alpha"] + sum(p["beta"][k] * y[t - k - 1] for k in range(K))
        lp += normal_lpdf(y[t], mu, p["sigma"])
    return lp


def stan_garch11(p, d):
    y, sigma = d["y"], [d["sigma1"]]
    for t in range(1, d["T"]):
        var = p["alpha0"] + p["alpha1"] * (y[t - 1] - p["mu"]) ** 2 + p["beta1"] * sigma[-1] ** 2
        sigma.append(math.sqrt(var))
    return normal_lpdf(y, p["mu"], sigma)


def stan_gp_pois_regr(p, d):
    f = gp_cholesky(d["x"], p["alpha"], p["rho"]) @ p["f_tilde"]
    return (
        gamma_lpdf(p["rho"], 25, 4)
        + normal_lpdf(p["alpha"], 0, 2)
        + normal_lpdf(p["f_tilde"], 0, 1)
        + poisson_log_lpmf(d["k"], f)
    )


def stan_kilpisjarvi(p, d):
    return (
        normal_lpdf(p["alpha"], d["pmualpha"], d["psalpha"])
        + normal_lpdf(p["beta"], d["pmubeta"], d["psbeta"])
        + normal_lpdf(d["y"], p["alpha"] + p["beta"] * np.asarray(d["x"]), p["sigma"])
    )


def stan_low_dim_gauss_mix(p, d):
    lp = normal_lpdf(p["sigma"], 0, 2) + normal_lpdf(p["mu"], 0, 2)
    lp += beta_lpdf(p["theta"], 5, 5)
    for y in d["y"]:
        first = math.log(p["theta"]) + normal_lpdf(y, p["mu"][0], p["sigma"][0])
        second = math.log1p(-p["theta"]) + normal_lpdf(y, p["mu"][1], p["sigma"][1])
        lp += np.logaddexp(first, second)
    return lp


def stan_diamonds(p, d):
    X = np.asarray(d["X"], dtype=float)[:, 1:]
    mean = p["Intercept"] + (X - X.mean(0)) @ p["b"]
    return (
        normal_lpdf(p["b"], 0, 1)
        + student_t_lpdf(p["Intercept"], 3, 8, 10)
        + student_t_lpdf(p["sigma"], 3, 0, 10)
        + normal_lpdf(d["Y"], mean, p["sigma"])
    )


STAN = {
    "eight_schools_noncentered": stan_eight_schools_noncentered,
    "eight_schools_centered": stan_eight_schools_centered,
    "arK": stan_arK,
    "garch11": stan_garch11,
    "gp_pois_regr": stan_gp_pois_regr,
    "kilpisjarvi_mod": stan_kilpisjarvi,
    "low_dim_gauss_mix": stan_low_dim_gauss_mix,
    "diamonds": stan_diamonds,
}


def stan_parameters(name, values, data):
    """The Stan program's parameters from a draw of its (transformed) reported columns."""
    p = dict(values)
    if name == "eight_schools_noncentered":
        p["theta_trans"] = (p.pop("theta") - p["mu"]) / p["tau"]
    if name == "gp_pois_regr":
        p["f_tilde"] = np.linalg.solve(gp_cholesky(data["x"], p["alpha"], p["rho"]), p.pop("f"))
    return p


def pyro_latents(name, p):
    """Stan parameters as the Pyro model's latent sites; garch's beta1 is beta1_raw there."""
    latents = dict(p)
    if name == "garch11":
        latents["beta1_raw"] = latents.pop("beta1") / (1 - p["alpha1"])
    return {k: torch.as_tensor(v, dtype=torch.float32) for k, v in latents.items()}


def stan_measure_correction(name, p):
    """log |d(Pyro's latents) / d(Stan's parameters)|: garch's beta1_raw = beta1 / (1 - alpha1)."""
    return -math.log1p(-p["alpha1"]) if name == "garch11" else 0.0


@needs_posteriordb
@pytest.mark.parametrize("name", list(SPECS), ids=list(SPECS))
def test_log_density_matches_stan_up_to_a_constant(name):
    target = load_target(name)
    data = load_data(name)
    points = [stan_parameters(name, draw(target, i), data) for i in (0, 1234, 4321)]
    pyro_lp = [
        pyro_log_density(target, pyro_latents(name, p)) + stan_measure_correction(name, p)
        for p in points
    ]
    stan_lp = [STAN[name](p, data) for p in points]
    assert_differences_match(pyro_lp, stan_lp)


@needs_posteriordb
@pytest.mark.parametrize("name", list(SPECS), ids=list(SPECS))
def test_model_reproduces_reference_columns_from_its_latents(name):
    """Reference draws map to latents the model accepts (support checked), and the
    model's sites then give back the reference columns (deterministic ones included)."""
    target = load_target(name)
    data = load_data(name)
    rows = range(0, 5000, 250)
    points = [stan_parameters(name, draw(target, i), data) for i in rows]
    for index, p in zip(rows, points, strict=True):
        latents = pyro_latents(name, p)
        with poutine.block():
            trace = poutine.trace(poutine.condition(target.model, data=latents)).get_trace(
                *target.args
            )
        assert math.isfinite(trace.log_prob_sum())
        got = torch.cat([trace.nodes[s]["value"].reshape(-1) for s, _ in target.columns])
        torch.testing.assert_close(got, target.reference[0][index], rtol=1e-4, atol=1e-4)


def test_sliced_w1_of_a_one_dimensional_shift_is_the_shift():
    x = torch.randn(1000, 1)
    assert sliced_w1(x, x + 0.3) == pytest.approx(0.3, rel=1e-4)


def test_moment_errors_report_mean_error_in_sds_and_sd_ratio_range():
    x = torch.tensor([[0.0, 0.0], [2.0, 4.0]])  # means (1, 2), sds (sqrt 2, 2 sqrt 2)
    error, low, high = moment_errors(x, torch.zeros(2), torch.tensor([math.sqrt(2), 1.0]))
    assert (error, low, high) == pytest.approx((2.0, 1.0, 2 * math.sqrt(2)))


@needs_posteriordb
def test_smoke_run_writes_every_table_with_a_row_per_target(tmp_path):
    out = tmp_path / "benchmarks.md"
    # A subset keeps the suite fast; the log-density tests cover every translation.
    subset = ["--exact", "funnel_d10", "banana_d2", "--posteriors", "eight_schools_centered",
              "--rival-particles", "matched", "--exact-rival-particles", "8",
              "--user-loop-guides", "AutoNormal", "--guides", *accuracy.GUIDES]  # fmt: skip
    args = accuracy.parse_args(["--smoke", *subset, "--out", str(out)])
    accuracy.main(args)
    text = out.read_text()
    assert "python -m benchmarks.accuracy --smoke --exact funnel_d10" in text
    kl_table = text.split("## KL(q‖p)")[1].split("##")[0]
    # The zuko column is there exactly when zuko (the bench extra) is installed.
    assert (f"| {ZUKO_GUIDE} |" in kl_table) == zuko_available()
    more = text.split("## Exact targets: the rivals at more particles")[1].split("##")[0]
    assert "AutoNormal ×8 |" in more
    assert "| funnel_d10 |" in more
    examples = text.split("## Pyro's examples: ELBO at equal particles")[1].split("##")[0]
    assert "| pyro_eight_schools | " in examples  # Pyro's 24-latent model, by default
    for name in args.exact:
        row = next(line for line in kl_table.splitlines() if line.startswith(f"| {name} |"))
        cells = row.strip("|").split("|")[1:]
        assert len(cells) == len(accuracy.GUIDES)
        assert all(math.isfinite(float(c.split()[0])) for c in cells if "failed" not in c)
    w1_table = text.split("## Sliced W1")[1].split("##")[0]
    for name in args.exact + args.posteriordb:
        assert f"| {name} |" in w1_table
    ours = text.split("## posteriordb: AutoRealNVP against")[1].split("##")[0]
    row = next(line for line in ours.splitlines() if line.startswith("| eight_schools_centered"))
    assert row.rstrip().endswith("| fast |")  # the path fit took, named
    equal = text.split("## posteriordb: ELBO at equal particles")[1].split("##")[0]
    assert "AutoNormal ×ours" in equal
    counts = text.split("## posteriordb: issue 29's counts")[1]
    assert "| k-hat < 0.7 | " in counts
    assert "/1 |" in counts


def test_a_stopped_run_leaves_the_last_whole_runs_results_and_a_whole_run_replaces_them(
    tmp_path, monkeypatch
):
    results = tmp_path / "fits.jsonl"
    results.write_text('{"target": "from the last whole run"}\n')
    small = ["--smoke", "--exact", "banana_d2", "--posteriors", "--examples", "--workers",
             "1", "--guides", "AutoNormal", "--user-loop-guides",
             "--results", str(results)]  # fmt: skip
    real, done = accuracy.run_job, []

    def stopped_after_one(job):
        if done:
            raise KeyboardInterrupt
        done.append(real(job))
        return done[-1]

    monkeypatch.setattr(accuracy, "run_job", stopped_after_one)
    with pytest.raises(KeyboardInterrupt):
        accuracy.main(accuracy.parse_args(small))
    assert results.read_text() == '{"target": "from the last whole run"}\n'
    monkeypatch.setattr(accuracy, "run_job", real)
    accuracy.main(accuracy.parse_args(small))
    lines = results.read_text().splitlines()
    assert lines[0].startswith('{"target": "banana_d2"')
    assert lines[-1].startswith('{"timing"')
    assert [p.name for p in tmp_path.iterdir()] == ["fits.jsonl"]  # no partial file left


def test_pyro_eight_schools_is_the_examples_model_with_24_latents():
    """Pyro's examples/eight_schools/svi.py draws mu and tau inside the schools' plate."""
    target = pyro_eight_schools()
    trace = poutine.trace(target.model).get_trace(*target.args)
    latents = {name: tuple(site["value"].shape) for name, site in trace.nodes.items()
               if site["type"] == "sample" and not site["is_observed"]
               and not site_is_subsample(site)}  # fmt: skip
    assert latents == {"eta": (8,), "mu": (8,), "tau": (8,)}
    eta, mu, tau = (trace.nodes[name]["value"] for name in ("eta", "mu", "tau"))
    y, sigma = target.args[0].T
    by_hand = (
        dist.Normal(0.0, 1.0).log_prob(eta).sum()
        + dist.Normal(0.0, 10.0).log_prob(mu).sum()
        + dist.HalfCauchy(25.0).log_prob(tau).sum()
        + dist.Normal(mu + tau * eta, sigma).log_prob(y).sum()
    )
    torch.testing.assert_close(trace.log_prob_sum(), by_hand)


def test_plain_loop_bench_writes_a_row_per_target_with_its_ratios(tmp_path):
    from benchmarks import plain_loop

    args = plain_loop.parse(["--quick", "--no-posteriordb", "--out", str(tmp_path / "p.md")])
    rows = plain_loop.main(args)
    assert [name for name, _, _ in rows] == ["funnel_d6", "pyro_eight_schools"]
    text = (tmp_path / "p.md").read_text()
    for name, dim, rounds in rows:
        assert set(rounds) == {*plain_loop.GUIDES, plain_loop.FALL_BACK}
        assert len(rounds["AutoRealNVP"]) == args.rounds
        assert min(rounds["AutoMultivariateNormal"]) > 0
        line = next(line for line in text.splitlines() if line.startswith(f"| {name} |"))
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        assert cells[1] == str(dim)
        assert cells[2] == f"{statistics.median(rounds['AutoRealNVP']):.2f}"
        ratios = np.divide(rounds["AutoRealNVP"], rounds["AutoMultivariateNormal"])
        lower, ratio, upper = np.percentile(ratios, [25, 50, 75])  # numpy's: linear, inclusive
        assert cells[7].startswith(f"{ratio:.2f} [{lower:.2f}, {upper:.2f}]")
        assert ("(met)" in cells[7]) == (ratio <= 2.0)
        flow = rounds["AutoNormalizingFlow (4 couplings)"]  # Pyro's own can fail on a NaN draw
        assert cells[5] == (f"{statistics.median(flow):.2f}" if flow else "failed")
        slower = np.divide(rounds[plain_loop.FALL_BACK], rounds["AutoRealNVP"])
        assert cells[-1].startswith(f"{np.median(slower):.2f}")


def test_paired_ratio_takes_each_rounds_own_ratio():
    from benchmarks.plain_loop import paired_ratio

    # A spell of load over rounds 2-3 doubles both guides' times, and round 4 slows ours
    # alone: the medians' ratio reads 4, each round's reads 2 but one.
    ours, theirs = [2.0, 4.0, 4.0, 4.0, 2.0], [1.0, 2.0, 2.0, 1.0, 1.0]
    assert statistics.median(ours) / statistics.median(theirs) == 4.0
    assert paired_ratio(ours, theirs) == (2.0, 2.0, 2.0)
    assert all(math.isnan(x) for x in paired_ratio([], [1.0]))
    assert paired_ratio([3.0], [1.5]) == (2.0, 2.0, 2.0)


def test_time_to_reach_is_the_first_point_within_two_standard_errors():
    from benchmarks.time_to_accuracy import time_to_reach

    points = [(1.0, 10, -12.0, 0.1), (2.0, 20, -10.3, 0.1), (3.0, 30, -9.0, 0.1)]
    assert time_to_reach(points, -10.0, 0.2) == 2.0  # -10.3 is within 2 * 0.22 of -10
    assert time_to_reach(points, -10.0, 0.01) == 3.0  # not within 2 * 0.1 any more
    assert time_to_reach(points, -8.0, 0.1) is None


def test_time_to_accuracy_bench_compares_every_rival_on_every_target(tmp_path):
    from benchmarks import time_to_accuracy as tta

    args = tta.parse(["--quick", "--out", str(tmp_path / "t.md"),
                      "--figure", str(tmp_path / "t.png")])  # fmt: skip
    args.steps, args.draws = 25, 100
    runs = tta.main(args)
    assert set(runs) == {"banana_d2", "pyro_eight_schools"}
    for by_guide in runs.values():
        assert set(by_guide) == {tta.OURS, *tta.RIVALS}
        for run in by_guide.values():
            seconds = [point[0] for point in run["points"]]
            assert seconds == sorted(seconds)
            assert seconds[0] >= run["setup"]
            assert [point[1] for point in run["points"]] == tta.checkpoints(25)
    rows = tta.comparisons(runs)
    assert len(rows) == 2 * len(tta.RIVALS)
    text = (tmp_path / "t.md").read_text()
    assert all(f"| {row['target']} | {row['rival']} |" in text for row in rows)
    assert (tmp_path / "t.png").stat().st_size > 10_000


def test_the_floor_is_the_median_w1_of_exact_draws_and_spreads_as_they_do():
    from benchmarks.accuracy import W1_SETS, _reference_pair, floor_sets, get_target
    from benchmarks.metrics import standardize

    target = get_target("corr_gauss_d20", 2000)
    floors = floor_sets(target, 2000)
    assert len(floors) == W1_SETS
    assert len(set(floors)) == W1_SETS
    first, _ = _reference_pair(target, 2000)
    cov = 0.1 * torch.eye(20) + 0.9 * torch.ones(20, 20)
    generator = torch.Generator().manual_seed(11)
    exact = [
        sliced_w1(
            standardize(torch.randn(2000, 20, generator=generator) @ torch.linalg.cholesky(cov).T,
                        target.ref_mean, target.ref_sd),
            first,
        )
        for _ in range(W1_SETS)
    ]  # fmt: skip
    ratio = statistics.median(exact) / statistics.median(floors)
    assert 0.67 < ratio < 1.5  # an exact sampler meets the bench's 1.5x bound on the median

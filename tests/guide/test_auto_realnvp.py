"""AutoRealNVP on posteriors with exact answers, constrained sites, plates and I/O."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from helpers import HITS, baseball, hierarchical
from pyro import poutine
from pyro.infer import SVI, Predictive, Trace_ELBO, TraceEnum_ELBO
from pyro.infer.autoguide import AutoNormal, init_to_sample
from pyro.optim import Adam

from pyro_realnvp import AutoRealNVP, RealNVP, fit

SMALL = {"num_layers": 4, "hidden_dims": (32, 32)}


def draws(guide, num_samples=4000, *args):
    return Predictive(guide.model, guide=guide, num_samples=num_samples, parallel=True)(*args)


def test_conjugate_normal_mean_and_sd():
    data = torch.tensor([0.8, 1.3, 2.1, 0.4, 1.7, 1.1, 0.9, 1.6])

    def model():
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        with pyro.plate("data", len(data)):
            pyro.sample("y", dist.Normal(mu, 1.0), obs=data)

    guide = AutoRealNVP(model, **SMALL)
    fit(model, guide, num_steps=1500, lr=0.01, num_particles=4, progress=False)
    n = len(data)
    mean, sd = data.sum() / (n + 1), 1 / math.sqrt(n + 1)
    samples = draws(guide)["mu"]
    # Tolerances in posterior standard deviations (0.33 here).
    assert abs(samples.mean() - mean) < 0.2 * sd
    assert abs(samples.std() / sd - 1) < 0.1
    assert abs(guide.median()["mu"] - mean) < 0.2 * sd


def test_correlated_gaussian_moments_with_defaults():
    cov = torch.tensor([[1.0, 0.9, 0.5], [0.9, 2.0, 0.3], [0.5, 0.3, 0.5]])
    loc = torch.tensor([1.0, -2.0, 0.5])

    def model():
        pyro.sample("z", dist.MultivariateNormal(loc, cov))

    guide = AutoRealNVP(model)
    fit(model, guide, num_steps=1500, lr=0.01, num_particles=4, progress=False)
    z = draws(guide, 8000)["z"].reshape(-1, 3)
    sd = cov.diag().sqrt()
    q_cov = torch.cov(z.T)
    q_sd = q_cov.diag().sqrt()
    # Means within 0.15 sd, sds within 10%, correlations within 0.08 (AutoNormal: 0.9 off).
    assert ((z.mean(0) - loc).abs() / sd).max() < 0.15
    assert (q_sd / sd - 1).abs().max() < 0.1
    assert (q_cov / torch.outer(q_sd, q_sd) - cov / torch.outer(sd, sd)).abs().max() < 0.08


def funnel(dim=3):
    def model():
        v = pyro.sample("v", dist.Normal(0.0, 3.0))
        scale = torch.exp(v / 2).unsqueeze(-1).expand(v.shape + (dim - 1,))
        pyro.sample("x", dist.Normal(0.0, scale).to_event(1))

    return model


def test_funnel_fits_the_neck_better_than_autonormal():
    # Exact draws by ancestral sampling: v ~ N(0, 3), x | v ~ N(0, e^{v/2}).
    model = funnel()
    exact_v = dist.Normal(0.0, 3.0).sample((100_000,))
    results = {}
    for name, guide in {"realnvp": AutoRealNVP(model), "normal": AutoNormal(model)}.items():
        pyro.set_rng_seed(1)
        fit(model, guide, num_steps=1500, lr=0.01, num_particles=4, progress=False)
        results[name] = draws(guide, 8000)["v"]
    v = results["realnvp"]
    # Reverse KL shrinks the neck. At this budget AutoNormal reaches sd(v) ~ 1.0 of 3.0;
    # the flow must reach well over half of it (2.6 after 4000 steps) and keep the mean.
    assert abs(v.mean() - exact_v.mean()) < 1.0  # a third of v's sd
    assert 0.55 < v.std() / exact_v.std() < 1.1
    assert v.std() > results["normal"].std() + 0.5


def test_constrained_sites_stay_on_their_support_and_fit():
    flips = torch.tensor([1.0, 1, 0, 1, 1, 1, 0, 1, 1, 1])
    counts = torch.tensor([3.0, 5, 4, 6])

    def model():
        p = pyro.sample("p", dist.Beta(2.0, 2.0))
        rate = pyro.sample("rate", dist.Gamma(2.0, 1.0))
        weights = pyro.sample("weights", dist.Dirichlet(torch.ones(3)))
        chol = pyro.sample("chol", dist.LKJCholesky(3, 2.0))
        u = pyro.sample("u", dist.Uniform(-1.0, 2.0))
        with pyro.plate("flips", len(flips)):
            pyro.sample("flip", dist.Bernoulli(p), obs=flips)
        with pyro.plate("counts", len(counts)):
            pyro.sample("count", dist.Poisson(rate), obs=counts)
        pyro.sample("multi", dist.Multinomial(20, weights), obs=torch.tensor([10.0, 6, 4]))
        return chol, u

    guide = AutoRealNVP(model)
    fit(model, guide, num_steps=1500, lr=0.01, num_particles=4, progress=False)
    s = draws(guide, 4000)
    assert ((s["p"] > 0) & (s["p"] < 1)).all()
    assert ((s["u"] > -1) & (s["u"] < 2)).all()
    assert (s["rate"] > 0).all()
    assert torch.allclose(s["weights"].sum(-1), torch.ones(4000), atol=1e-5)
    assert dist.constraints.corr_cholesky.check(s["chol"]).all()
    # Conjugate posteriors: Beta(2 + 8, 2 + 2), Gamma(2 + 18, 1 + 4), Dirichlet(11, 7, 5).
    assert abs(s["p"].mean() - 10 / 14) < 0.03
    assert abs(s["rate"].mean() - 20 / 5) < 0.2
    assert (s["weights"].mean(0) - torch.tensor([11.0, 7, 5]) / 23).abs().max() < 0.03
    q = guide.quantiles([0.05, 0.5, 0.95])
    assert (q["p"].diff() > 0).all()
    # Coordinate-wise quantiles of a simplex need not sum to 1; the median is on it.
    assert (q["weights"].diff(dim=0) > 0).all()
    median = guide.median()
    assert torch.allclose(median["weights"].sum(-1), torch.tensor(1.0), atol=1e-5)
    assert 0 < median["p"] < 1
    assert median["rate"] > 0


def test_plates_and_predictive_shapes():
    data = torch.randn(5, 4) + torch.arange(5.0).unsqueeze(-1)
    model = hierarchical(data)
    guide = AutoRealNVP(model, **SMALL)
    fit(model, guide, num_steps=300, lr=0.01, progress=False)
    assert guide.latent_dim == 6
    assert guide()["theta"].shape == (5,)
    predictive = Predictive(model, guide=guide, num_samples=100, return_sites=["theta", "y"])
    samples = predictive()
    # Predictive pads each site to the model's plate nesting (2 here).
    assert samples["theta"].shape == (100, 1, 5)
    assert samples["y"].shape == (100, 4, 5)
    # Groups with larger data have larger theta: the guide learned per-group locations.
    assert (samples["theta"].mean(0).squeeze(0).diff() > 0).all()
    assert guide.quantiles([0.1, 0.9])["theta"].shape == (2, 5)


def test_vectorized_particles_are_supported():
    model = hierarchical(torch.randn(3, 2))
    guide = AutoRealNVP(model, **SMALL)
    losses = fit(model, guide, num_steps=20, num_particles=8, progress=False)
    assert all(math.isfinite(loss) for loss in losses)


def test_float64_model_gets_float64_parameters():
    def model():
        pyro.sample("x", dist.Normal(torch.tensor(0.0, dtype=torch.float64), 1.0))

    guide = AutoRealNVP(model, **SMALL)
    fit(model, guide, num_steps=5, progress=False)
    assert {p.dtype for p in guide.parameters()} == {torch.float64}
    assert guide()["x"].dtype == torch.float64


def test_enumerated_discrete_latent_is_left_to_the_elbo():
    data = torch.tensor([-2.1, -1.9, -2.2, 2.0, 1.8, 2.3])

    @pyro.infer.config_enumerate
    def model():
        locs = pyro.sample("locs", dist.Normal(0.0, 5.0).expand([2]).to_event(1))
        with pyro.plate("data", len(data)):
            which = pyro.sample("which", dist.Categorical(torch.ones(2) / 2))
            pyro.sample("y", dist.Normal(locs[which], 0.5), obs=data)

    guide = AutoRealNVP(model, **SMALL)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.05}), TraceEnum_ELBO(max_plate_nesting=1))
    losses = torch.tensor([svi.step() for _ in range(300)])
    assert guide.latent_dim == 2
    assert losses[-50:].mean() < losses[:50].mean()
    assert sorted(guide.median()["locs"].abs().tolist()) == pytest.approx([2.0, 2.0], abs=0.4)


@pytest.mark.parametrize("affine", ["lower", "diagonal"])
def test_affine_choice_starts_as_a_gaussian_of_init_scale(affine):
    def model():
        pyro.sample("z", dist.Normal(torch.zeros(3), 1.0).to_event(1))

    guide = AutoRealNVP(model, affine=affine, init_scale=0.5, init_loc_fn=lambda s: torch.ones(3))
    guide()
    assert ("scale_tril" in guide._pyro_params) == (affine == "lower")
    z = draws(guide, 20000)["z"]
    assert (z.mean(0) - 1).abs().max() < 0.03
    assert (z.std(0) - 0.5).abs().max() < 0.02


def test_auto_init_scale_is_the_laplace_scale_where_data_are_informative():
    data = torch.randn(400)

    def model():
        mu = pyro.sample("mu", dist.Normal(0.0, 10.0))
        # log s ~ N(0, 0.1^2): in the unconstrained space the potential is that Gaussian
        # exactly, but only once the log-det of biject_to is counted.
        pyro.sample("s", dist.LogNormal(0.0, 0.1))
        with pyro.plate("data", len(data)):
            pyro.sample("y", dist.Normal(mu, 1.0), obs=data)

    guide = AutoRealNVP(model)
    guide()
    expected = torch.tensor([(400 + 1 / 100) ** -0.5, 0.1])
    assert torch.allclose(guide.scale.detach(), expected, rtol=1e-3)


def test_auto_init_scale_is_capped_at_one_and_falls_back_where_curvature_is_not_positive():
    def model():
        pyro.sample("wide", dist.Normal(0.0, 3.0))
        pyro.sample("flat", dist.ImproperUniform(dist.constraints.real, (), ()))
        pyro.sample("cauchy", dist.Cauchy(0.0, 1.0))  # concave beyond |x| = 1

    init = {"wide": 0.0, "flat": 0.0, "cauchy": 3.0}
    guide = AutoRealNVP(model, init_loc_fn=lambda site: torch.tensor(init[site["name"]]))
    guide()
    assert guide.scale.detach().tolist() == [1.0, 1.0, 1.0]


def test_a_number_for_init_scale_is_used_as_given():
    def model():
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        with pyro.plate("data", 100):
            pyro.sample("y", dist.Normal(mu, 1.0), obs=torch.zeros(100))

    guide = AutoRealNVP(model, init_scale=0.7)
    guide()
    assert guide.scale.detach().tolist() == pytest.approx([0.7])


@pytest.mark.cuda
def test_cuda_model_trains_on_cuda_without_default_device():
    device = torch.device("cuda")
    data = torch.randn(20, device=device) + 1.0

    def model():
        mu = pyro.sample("mu", dist.Normal(torch.tensor(0.0, device=device), 1.0))
        scale = pyro.sample("scale", dist.LogNormal(torch.tensor(0.0, device=device), 1.0))
        with pyro.plate("data", len(data), device=device):
            pyro.sample("y", dist.Normal(mu, scale), obs=data)

    guide = AutoRealNVP(model)
    losses = fit(model, guide, num_steps=200, progress=False)
    assert all(math.isfinite(loss) for loss in losses)
    assert {p.device.type for p in guide.parameters()} == {"cuda"}
    assert guide.median()["mu"].device.type == "cuda"
    with poutine.trace() as tr:
        guide()
    assert tr.trace.nodes["mu"]["value"].device.type == "cuda"


def conjugate_gaussian():
    """z ~ N(m0, S0), y ~ N(A z, 0.5^2 I): the exact posterior, and the model (float64)."""
    generator = torch.Generator().manual_seed(1)
    a = torch.randn(40, 3, generator=generator, dtype=torch.float64)
    m0 = torch.tensor([1.0, -1.0, 0.0], dtype=torch.float64)
    s0 = torch.tensor([[2.0, 0.5, 0.0], [0.5, 1.0, 0.3], [0.0, 0.3, 1.5]], dtype=torch.float64)
    y = a @ torch.tensor([0.5, 0.2, -0.7], dtype=torch.float64) + 0.5 * torch.randn(
        40, generator=generator, dtype=torch.float64
    )

    def model():
        z = pyro.sample("z", dist.MultivariateNormal(m0, s0))
        pyro.sample("y", dist.Normal(z @ a.T, 0.5).to_event(1), obs=y)

    precision = torch.linalg.inv(s0) + a.T @ a / 0.25
    covariance = torch.linalg.inv(precision)
    mean = covariance @ (torch.linalg.solve(s0, m0) + a.T @ y / 0.25)
    return model, mean, covariance


def banana_model():
    x1 = pyro.sample("x1", dist.Normal(0.0, 10.0))
    pyro.sample("x2", dist.Normal(0.1 * (x1**2 - 100.0), 1.0))


@pytest.mark.parametrize(("start_rule", "kind"), [("auto", "local"), ("elbo", "local"),
                                                ("proper", "laplace")])  # fmt: skip
def test_a_guide_set_up_by_its_first_call_starts_by_its_rule(start_rule, kind):
    # As in Pyro's own loop: "auto" is the ELBO rule there, which keeps the banana's
    # narrow local start (ELBO about -2.5) over the Laplace one (about -112).
    guide = AutoRealNVP(banana_model, start_rule=start_rule, num_layers=2)
    guide()
    assert guide.start.kind == kind
    assert (guide.start.elbo > -20) == (kind == "local")


def test_guide_starts_at_the_exact_posterior_of_a_conjugate_gaussian_model():
    model, mean, covariance = conjugate_gaussian()
    guide = AutoRealNVP(model)
    guide()  # set-up only: no SVI step
    assert guide.start.kind == "laplace"
    scale_tril = guide.scale.detach()[:, None] * guide.scale_tril.detach()
    assert torch.allclose(guide.loc.detach(), mean, atol=1e-6)
    assert torch.allclose(scale_tril @ scale_tril.T, covariance, rtol=1e-5, atol=1e-9)
    z = draws(guide, 20000)["z"].reshape(-1, 3)
    sd = covariance.diagonal().sqrt()
    # Monte-Carlo error of a mean over 20000 draws is 0.007 sd: allow 0.03 sd.
    assert ((z.mean(0) - mean) / sd).abs().max() < 0.03
    assert (torch.cov(z.T) - covariance).abs().max() / sd.min() ** 2 < 0.04


def test_an_indefinite_hessian_at_the_mode_falls_back_and_warns_naming_the_site(monkeypatch):
    import pyro_realnvp.guide.laplace as laplace

    true_hessian = laplace.hessian

    def indefinite(potential, u, *, diagonal=False, **kwargs):
        h = true_hessian(potential, u, diagonal=diagonal, **kwargs)
        if not diagonal:  # the dense Hessian at the mode: make 'b' a saddle direction
            h[1, 1] = -1.0
        return h

    monkeypatch.setattr(laplace, "hessian", indefinite)

    def model():
        pyro.sample("a", dist.Normal(0.0, 1.0))
        pyro.sample("b", dist.Normal(0.0, 2.0))
        pyro.sample("c", dist.Normal(0.0, 0.5))

    guide = AutoRealNVP(model, num_layers=2)
    with pytest.warns(UserWarning, match=r"not positive definite at site\(s\) \['b'\]"):
        guide()
    assert guide.start.bad.tolist() == [False, True, False]
    assert guide.scale.detach().tolist() == pytest.approx([1.0, 1.0, 0.5], rel=1e-4)
    losses = fit(model, guide, num_steps=20, progress=False)
    assert all(math.isfinite(loss) for loss in losses)


def regression(num_rows: int, num_weights: int, seed: int = 123):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(num_rows, num_weights, generator=generator)
    y = x @ torch.randn(num_weights, generator=generator) + 0.5 * torch.randn(
        num_rows, generator=generator
    )

    def model():
        w = pyro.sample("w", dist.Normal(0.0, 1.0).expand([num_weights]).to_event(1))
        sigma = pyro.sample("sigma", dist.HalfNormal(1.0))
        with pyro.plate("rows", num_rows):
            pyro.sample("y", dist.Normal(x @ w, sigma), obs=y)

    return model


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_plain_svi_loop_trains_a_regression_on_thousands_of_rows(seed):
    # Pyro's loop as users write it: before the Laplace start and fan-in scaled
    # conditioners, 3 of 5 seeds of the 2000-row, 20-weight version crashed (NaN draws).
    model = regression(1000, 8)
    pyro.set_rng_seed(seed)
    guide = AutoRealNVP(model)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.01}), Trace_ELBO())
    losses = [svi.step() for _ in range(300)]
    assert all(math.isfinite(loss) for loss in losses)
    elbo = -Trace_ELBO(num_particles=200).loss(model, guide)
    # It started at the Laplace approximation; training must not have made it worse.
    assert elbo > guide.start.elbo - 1.0
    with torch.no_grad():
        flow_out = guide.flow(torch.randn(4000, guide.latent_dim))
    assert flow_out.abs().max() < 10.0


def test_an_interrupted_set_up_leaves_a_guide_that_sets_up_again():
    calls = []

    def model():
        calls.append(None)
        if len(calls) == 3:  # inside the mode search
            raise KeyboardInterrupt
        pyro.sample("x", dist.Normal(1.0, 1.0))

    guide = AutoRealNVP(model)
    with pytest.raises(KeyboardInterrupt):
        guide()
    assert guide.prototype_trace is None
    assert guide()["x"].shape == ()
    assert abs(float(guide.median()["x"]) - 1.0) < 0.2  # a fresh start near the mode


def test_the_guides_flow_grows_at_most_linearly_however_far_out_the_draw():
    # Its conditioners read inputs clamped at INPUT_BOUND, so far out every layer is
    # affine with bounded scale and shift. Unclamped, each layer's shift grows with its
    # input and the next layer reads it as a larger input still.
    from helpers import randomize_

    from pyro_realnvp.guide import INPUT_BOUND

    def model():
        pyro.sample("x", dist.Normal(torch.zeros(4), 1.0).to_event(1))

    guide = AutoRealNVP(model, num_layers=6, hidden_dims=(16, 16))
    guide()
    randomize_(guide.flow, std=1.0, seed=1)
    assert all(layer.input_bound == INPUT_BOUND for layer in guide.flow.layers)
    unbounded = RealNVP(4, num_layers=6, hidden_dims=(16, 16), fan_in_scaling=True)
    unbounded.load_state_dict(guide.flow.state_dict())
    direction = torch.tensor([0.6, -0.8, 0.3, 0.5])
    with torch.no_grad():
        bounded_norms = [float(guide.flow(k * direction).norm()) for k in (1e3, 1e4, 1e5, 1e6)]
        free_norms = [float(unbounded(k * direction).norm()) for k in (1e3, 1e4, 1e5, 1e6)]
    assert all(b < f / 100 for b, f in zip(bounded_norms, free_norms, strict=True))
    assert 5 < bounded_norms[-1] / bounded_norms[-2] < 20  # linear far out


def test_the_flow_keeps_a_scalar_site_apart_from_every_coordinate_of_the_others():
    # 10 coordinates, 6 layers: by index, the funnel's v shared every layer with one x.
    def funnel():
        v = pyro.sample("v", dist.Normal(0.0, 3.0))
        pyro.sample("x", dist.Normal(0.0, torch.exp(v / 2)).expand([9]).to_event(1))

    guide = AutoRealNVP(funnel, num_layers=6, hidden_dims=(8,))
    guide()
    masks = torch.stack([layer.mask for layer in guide.flow.layers]).bool()
    moves_v_reading = (~masks[:, :1] & masks[:, 1:]).any(0)  # x_i read while v moves
    moves_reading_v = (masks[:, :1] & ~masks[:, 1:]).any(0)  # x_i moved while v is read
    assert bool(moves_v_reading.all())
    assert bool(moves_reading_v.all())


def counting(init_fn, calls: list[str]):
    def init(site):
        calls.append(site["name"])
        return init_fn(site)

    return init


def test_the_start_reads_the_model_without_running_init_loc_fn_again():
    # Through init_loc_fn's messenger every evaluation of the potential would draw its
    # initial values anew (init_to_median: 15 prior draws a site), from the global RNG.
    calls = []
    model = hierarchical(torch.randn(5, 4))
    AutoRealNVP(model, init_loc_fn=counting(init_to_sample, calls), **SMALL)()
    assert sorted(calls) == ["mu", "theta"]  # once each, for the prototype trace


def test_a_hierarchical_model_whose_mode_search_hits_its_budget_starts_outside_the_neck():
    # At seed 0 init_to_median's point sends the mode search down the scale's neck (the
    # density grows without bound as scale -> 0): no mode, so no Laplace start there.
    pyro.set_rng_seed(0)
    guide = AutoRealNVP(baseball)
    guide(torch.full((18,), 45.0), HITS)
    assert guide.start.kind == "local"
    assert guide.median()["scale"] > 0.05


@pytest.mark.slow
def test_pyros_plain_loop_trains_baseball_on_every_seed():
    for seed in range(20):
        pyro.clear_param_store()
        pyro.set_rng_seed(seed)
        guide = AutoRealNVP(baseball)
        svi = SVI(baseball, guide, Adam({"lr": 0.01}), Trace_ELBO())
        losses = [svi.step(torch.full((18,), 45.0), HITS) for _ in range(3000)]
        assert math.isfinite(sum(losses[-100:])), seed
        assert sum(losses[-100:]) / 100 < 55, seed  # every seed near -ELBO 50 (docs/tuning.md)

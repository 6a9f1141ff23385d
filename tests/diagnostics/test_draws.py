"""A guide's draws scored by the model: vectorized where Pyro can, draw by draw else,
the same either way; bad arguments and subsampling refused by name."""

import math
import re
from functools import partial

import pyro
import pyro.distributions as dist
import pytest
import torch
from diagnostic_models import (
    ROWS,
    SIGMA,
    Y,
    funnel,
    subsampled_local_latents,
    subsampled_observations,
)
from pyro.infer.autoguide import AutoDiagonalNormal, AutoNormal
from torch.distributions import biject_to

from benchmarks.diagnostics import BayesianRegression, dirichlet_categorical
from benchmarks.diagnostics import lkj as lkj_model
from benchmarks.stability import hierarchical
from pyro_realnvp import AutoRealNVP, fit, psis_khat, to_inference_data
from pyro_realnvp.diagnostics import importance_draws
from pyro_realnvp.guide.potential import Potential


@pytest.mark.parametrize(
    ("function", "num_samples"),
    [(psis_khat, 5), (to_inference_data, 0)],
    ids=["psis_khat", "to_inference_data"],
)
def test_too_few_samples_name_the_argument(function, num_samples):
    with pytest.raises(ValueError, match="num_samples"):
        function(funnel, AutoNormal(funnel), num_samples=num_samples)


@pytest.mark.cuda
def test_diagnostics_take_a_model_on_cuda():
    sigma, y = SIGMA.cuda(), Y.cuda()

    def model():
        mu = pyro.sample("mu", dist.Normal(torch.zeros((), device="cuda"), 5.0))
        with pyro.plate("school", len(sigma)):
            # Student-t, not normal: with a conjugate model the Laplace start is the exact
            # posterior, the weights are constant and k-hat is -inf (seen on an H200).
            pyro.sample("obs", dist.StudentT(3.0, mu, sigma), obs=y)

    guide = AutoRealNVP(model, num_layers=2, hidden_dims=(16,))
    fit(model, guide, num_steps=50, progress=False)
    assert math.isfinite(psis_khat(model, guide, num_samples=500))
    data = to_inference_data(model, guide, num_samples=100)
    assert data.posterior_predictive["obs"].dims == ("chain", "draw", "school")


PACKED = {
    "AutoDiagonalNormal": lambda model: AutoDiagonalNormal(model),
    "AutoRealNVP": lambda model: AutoRealNVP(model, num_layers=2, hidden_dims=(8,)),
}


@pytest.mark.parametrize("function", [psis_khat, to_inference_data], ids=lambda f: f.__name__)
@pytest.mark.parametrize("make_guide", PACKED.values(), ids=PACKED)
def test_a_local_latent_packed_at_the_subsample_size_is_refused(function, make_guide):
    pyro.clear_param_store()
    guide = make_guide(subsampled_local_latents)
    with pytest.raises(ValueError, match=r"latent site 'z' is in subsampling plate 'data'"):
        function(subsampled_local_latents, guide, num_samples=20)


@pytest.mark.parametrize("function", [psis_khat, to_inference_data], ids=lambda f: f.__name__)
def test_explicit_subsample_indices_are_refused(function):
    def model(index):
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        with pyro.plate("data", len(ROWS), subsample=index):
            pyro.sample("y", dist.Normal(mu, 1.0), obs=ROWS[index])

    index = torch.arange(10)
    with pytest.raises(ValueError, match=r"site 'y' is in plate 'data' given explicit indices"):
        function(model, AutoNormal(model), index, num_samples=20)


def test_log_weights_agree_with_the_full_data_potential():
    # Pyro's importance weights for an AutoContinuous guide and the package's one
    # potential are two routes to log p(x, T(u)) + log|J_T(u)| - log q(u).
    def model(rows=ROWS):
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        s = pyro.sample("s", dist.LogNormal(0.0, 1.0))
        with pyro.plate("data", len(rows), subsample_size=10) as index:
            pyro.sample("y", dist.Normal(mu, s), obs=rows[index])

    pyro.clear_param_store()
    guide = AutoRealNVP(model, num_layers=2, hidden_dims=(8,))
    data = to_inference_data(model, guide, num_samples=20)
    mu, s = (torch.as_tensor(data.posterior[name].values[0]) for name in ("mu", "s"))
    u = torch.stack([mu, s.log()], -1)
    potential = Potential(model, guide, full_data=True)
    potential.set_max_plate_nesting()
    with torch.no_grad():
        expected = potential.log_joint(u[:, None]) - guide.get_posterior().log_prob(u)
    actual = torch.as_tensor(data.sample_stats["log_weight"].values[0])
    assert torch.allclose(actual, expected, rtol=1e-5, atol=1e-3)


BAD_NUM_SAMPLES = {
    "psis_khat-float": (psis_khat, 20.5, TypeError, "num_samples must be an integer >= 10"),
    "psis_khat-str": (psis_khat, "100", TypeError, "num_samples must be an integer >= 10"),
    "psis_khat-none": (psis_khat, None, TypeError, "num_samples must be an integer >= 10"),
    "to_inference_data-float": (
        to_inference_data,
        2.5,
        TypeError,
        "num_samples must be an integer >= 1, got 2.5",
    ),
}


@pytest.mark.parametrize(
    ("function", "num_samples", "error", "message"),
    BAD_NUM_SAMPLES.values(),
    ids=BAD_NUM_SAMPLES,
)
def test_a_non_integer_num_samples_is_named(function, num_samples, error, message):
    with pytest.raises(error, match=message):
        function(funnel, AutoNormal(funnel), num_samples=num_samples)


@pytest.mark.parametrize("function", [psis_khat, to_inference_data], ids=lambda f: f.__name__)
@pytest.mark.parametrize(
    ("nesting", "error"), [(-1, ValueError), (1.5, TypeError)], ids=["negative", "float"]
)
def test_a_bad_max_plate_nesting_is_named(function, nesting, error):
    expected = f"max_plate_nesting must be None or an integer >= 0, got {nesting}"
    with pytest.raises(error, match=f"^{re.escape(expected)}$"):
        function(funnel, AutoNormal(funnel), num_samples=20, max_plate_nesting=nesting)


@pytest.mark.parametrize("function", [psis_khat, to_inference_data], ids=lambda f: f.__name__)
def test_a_max_plate_nesting_below_the_models_plates_is_named(function):
    guide = AutoNormal(subsampled_observations)
    guide()
    with pytest.raises(ValueError, match="^max_plate_nesting=0 is less than the 1 plate") as error:
        function(subsampled_observations, guide, num_samples=20, max_plate_nesting=0)
    assert "at site 'y': Value is not broadcastable" in str(error.value)
    assert "leave it None to have it measured" in str(error.value)


def schools_model(sigma, y):
    mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = pyro.sample("tau", dist.HalfCauchy(5.0))
    with pyro.plate("school", len(sigma)):
        theta = pyro.sample("theta", dist.Normal(mu, tau))
        pyro.sample("obs", dist.Normal(theta, sigma), obs=y)


# Models Pyro cannot vectorize over draws, as users write them (issue 28).


def unvectorizable():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(40, 3, generator=generator)
    y = x @ torch.tensor([1.0, -0.5, 0.3]) + 0.5 * torch.randn(40, generator=generator)
    rows = torch.multinomial(torch.tensor([0.2, 0.3, 0.5]), 200, True, generator=generator)
    return {
        "dirichlet-categorical": (dirichlet_categorical, (rows.reshape(40, 5),)),
        "lkj": (lkj_model, (torch.randn(30, 3, generator=generator),)),
        "pyro-module-regression": (BayesianRegression(3, 1), (x, y)),
        "hierarchical-134": hierarchical(num_rows=2000),
    }


UNVECTORIZABLE = unvectorizable()


@pytest.mark.parametrize(("model", "args"), UNVECTORIZABLE.values(), ids=UNVECTORIZABLE)
def test_a_model_pyro_cannot_vectorize_is_diagnosed(model, args):
    guide = AutoRealNVP(model, num_layers=2, hidden_dims=(16,))
    fit(model, guide, *args, num_steps=20, progress=False)
    khat = psis_khat(model, guide, *args, num_samples=50, num_sets=2)
    assert math.isfinite(khat)
    assert khat.method == "vmap"  # Pyro's draws plate fails; torch.func.vmap batches it
    data = to_inference_data(model, guide, *args, num_samples=10, num_chains=2)
    latents = {name for name, _ in guide.prototype_trace.iter_stochastic_nodes()}
    assert latents <= set(data.posterior.data_vars)
    assert data.posterior.sizes["chain"] == 2
    assert data.log_likelihood.data_vars


@pytest.mark.parametrize("name", ["dirichlet-categorical", "lkj", "pyro-module-regression"])
def test_a_guide_pyro_cannot_vectorize_is_diagnosed_draw_by_draw(name):
    model, args = UNVECTORIZABLE[name]
    guide = AutoNormal(model)  # no packed latent: vmap does not apply
    draws = importance_draws(model, guide, *args, num_samples=6)
    assert draws.method == "draw by draw"
    assert "cannot broadcast the model over draws" in draws.note
    assert torch.isfinite(draws.log_weights).all()


def _log_weight_at(model, guide, args, latent: dict, index: int) -> torch.Tensor:
    """One draw's log-weight computed apart from the diagnostics: the guide conditioned
    on the packed latent that gives the draw's values, the model replayed at them."""
    sites = list(guide.prototype_trace.iter_stochastic_nodes())
    packed = torch.cat([
        biject_to(site["fn"].support).inv(latent[name][index]).reshape(-1)
        for name, site in sites
    ])  # fmt: skip
    conditioned = pyro.poutine.condition(guide, data={f"_{guide._pyro_name}_latent": packed})
    guide_trace = pyro.poutine.trace(conditioned).get_trace(*args)
    replayed = pyro.poutine.replay(model, trace=guide_trace)
    model_trace = pyro.poutine.trace(replayed).get_trace(*args)
    return model_trace.log_prob_sum() - guide_trace.log_prob_sum()


@pytest.mark.parametrize(
    ("model", "args"),
    [(partial(schools_model, SIGMA, Y), ()), UNVECTORIZABLE["dirichlet-categorical"]],
    ids=["schools", "dirichlet-categorical"],
)
def test_vmap_scores_each_draw_as_the_model_does_alone(model, args):
    guide = AutoRealNVP(model, num_layers=2, hidden_dims=(8,))
    fit(model, guide, *args, num_steps=20, progress=False)
    draws = importance_draws(model, guide, *args, num_samples=40, method="vmap")
    assert draws.method == "vmap"
    alone = torch.stack([
        _log_weight_at(model, guide, args, draws.latent, i) for i in range(40)
    ])  # fmt: skip
    assert torch.allclose(alone, draws.log_weights, rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize(
    "make_guide",
    [lambda m: AutoRealNVP(m, num_layers=2, hidden_dims=(8,)), lambda m: AutoNormal(m)],
    ids=["AutoRealNVP", "AutoNormal"],
)
def test_the_draws_score_the_same_one_by_one_as_vectorized(make_guide):
    from pyro_realnvp.diagnostics.draws import _Scorer, _slice
    from pyro_realnvp.diagnostics.khat import _pareto_khat

    model = partial(schools_model, SIGMA, Y)
    guide = make_guide(model)
    fit(model, guide, num_steps=30, progress=False)
    scorer = _Scorer(model, guide, (), {}, False, "test")
    one = scorer.one_draw()
    together, guide_trace = scorer._chunk(200, 1, one)
    alone = []
    for index in range(200):
        replayed = pyro.poutine.replay(guide, trace=_slice(guide_trace, one[0], index))
        guide_trace_i, model_trace_i = scorer.score(replayed)
        alone.append(model_trace_i.log_prob_sum() - guide_trace_i.log_prob_sum())
    alone = torch.stack(alone)
    assert torch.allclose(alone, together.log_weights, rtol=1e-5, atol=1e-4)
    assert _pareto_khat(alone)[0] == pytest.approx(_pareto_khat(together.log_weights)[0], abs=1e-3)


def mixing(y):
    # ``.sum()`` over every dimension passes Pyro's shape checks under a draws plate
    # and adds the draws' likelihoods together.
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    pyro.factor("likelihood", dist.Normal(mu, 1.0).log_prob(y.unsqueeze(-1)).sum())


def test_a_model_that_mixes_the_draws_is_scored_one_by_one():
    y = torch.tensor([0.3, -0.2, 1.1])
    guide = AutoNormal(mixing, init_scale=0.5)
    draws = importance_draws(mixing, guide, y, num_samples=30)
    assert draws.method == "draw by draw"
    assert "mixes the draws" in draws.note
    mu = draws.latent["mu"]
    expected = (
        dist.Normal(0.0, 1.0).log_prob(mu)
        + dist.Normal(mu[:, None], 1.0).log_prob(y).sum(-1)
        - dist.Normal(0.0, 0.5).log_prob(mu)
    )
    assert torch.allclose(draws.log_weights, expected, atol=1e-5)


def test_a_model_with_much_work_per_draw_is_vectorized_in_chunks(monkeypatch):
    from pyro_realnvp.diagnostics import draws as module

    monkeypatch.setattr(module, "CHUNK_ELEMENTS", 4000)  # a few draws a pass here
    calls = []
    original = module.vectorized_importance_weights

    def counted(*args, num_samples, **kwargs):
        calls.append(num_samples)
        return original(*args, num_samples=num_samples, **kwargs)

    monkeypatch.setattr(module, "vectorized_importance_weights", counted)
    model = partial(schools_model, SIGMA, Y)
    draws = importance_draws(model, AutoNormal(model), num_samples=100)
    assert draws.method == "vectorized"
    assert draws.log_weights.shape == (100,)
    assert draws.latent["theta"].shape == (100, 8)
    chunks = calls[3:]  # after the probes of 2 draws and of 2 and 4 draws
    assert sum(chunks) == 100
    assert max(chunks) < 100


def test_a_method_named_is_used_or_its_failure_raised():
    model = partial(schools_model, SIGMA, Y)
    guide = AutoNormal(model)
    assert importance_draws(model, guide, num_samples=5, method="draw by draw").method == (
        "draw by draw"
    )
    y = torch.tensor([0.3, -0.2, 1.1])
    data = UNVECTORIZABLE["dirichlet-categorical"][1][0]
    with pytest.raises(RuntimeError):
        importance_draws(dirichlet_categorical, AutoNormal(dirichlet_categorical), data,
                         num_samples=5, method="vectorized")  # fmt: skip
    with pytest.raises(ValueError, match="method='vmap' needs a guide over a packed latent"):
        importance_draws(dirichlet_categorical, AutoNormal(dirichlet_categorical), data,
                         num_samples=5, method="vmap")  # fmt: skip
    with pytest.raises(ValueError, match="method must be None or one of"):
        importance_draws(model, guide, num_samples=5, method="loop")
    # named, the vectorized pass runs without the two-draw check
    assert importance_draws(
        mixing, AutoNormal(mixing), y, num_samples=5, method="vectorized"
    ).method == ("vectorized")

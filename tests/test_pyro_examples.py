"""Pyro's own examples as bench targets (benchmarks/pyro_examples.py), and the
time-to-accuracy bench's groups and ELBO estimate on models Pyro cannot vectorize."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer.autoguide import AutoNormal
from pyro.poutine.util import site_is_subsample

from benchmarks import time_to_accuracy as tta
from benchmarks.accuracy import SLOW_TARGETS
from benchmarks.posteriordb import POSTERIORDB_TARGETS
from benchmarks.pyro_examples import (
    OTHER_PYRO_EXAMPLES,
    PYRO_EXAMPLES,
    pyro_baseball,
    pyro_lkj,
    pyro_neutra_banana,
    pyro_regression_tutorial,
)
from benchmarks.targets import EXACT_TARGETS


def latents(trace: poutine.Trace) -> dict[str, tuple]:
    return {name: tuple(site["value"].shape) for name, site in trace.nodes.items()
            if site["type"] == "sample" and not site["is_observed"]
            and not site_is_subsample(site)}  # fmt: skip


def traced(target):
    pyro.set_rng_seed(0)
    trace = poutine.trace(target.model).get_trace(*target.args)
    assert latents(trace) == {name: latents(trace)[name] for name, _ in target.columns}
    assert sum(math.prod(latents(trace)[name]) for name, _ in target.columns) == target.dim
    return trace


def test_baseball_is_the_partially_pooled_logit_model():
    target = pyro_baseball()
    trace = traced(target)
    loc, scale, alpha = (trace.nodes[name]["value"] for name in ("loc", "scale", "alpha"))
    at_bats, hits = target.args
    by_hand = (dist.Normal(-1.0, 1.0).log_prob(loc) + dist.HalfCauchy(1.0).log_prob(scale)
               + dist.Normal(loc, scale).log_prob(alpha).sum()
               + dist.Binomial(45, logits=alpha).log_prob(hits).sum())  # fmt: skip
    torch.testing.assert_close(trace.log_prob_sum(), by_hand)
    assert hits.tolist()[:3] == [18, 17, 16]  # Clemente, F. Robinson, F. Howard


def test_regression_tutorial_is_a_pyro_module_with_the_tutorials_priors():
    target = pyro_regression_tutorial()
    trace = traced(target)
    weight, bias, sigma = (trace.nodes[name]["value"]
                           for name in ("linear.weight", "linear.bias", "sigma"))  # fmt: skip
    x, y = target.args
    assert x.shape == (170, 3)
    by_hand = (dist.Normal(0.0, 1.0).log_prob(weight).sum()
               + dist.Normal(0.0, 10.0).log_prob(bias).sum()
               + dist.Uniform(0.0, 10.0).log_prob(sigma)
               + dist.Normal(x @ weight[0] + bias, sigma).log_prob(y).sum())  # fmt: skip
    torch.testing.assert_close(trace.log_prob_sum(), by_hand)


def test_lkj_is_the_examples_model_in_float64():
    target = pyro_lkj()
    trace = traced(target)
    theta, factor = trace.nodes["theta"]["value"], trace.nodes["L_omega"]["value"]
    (y,) = target.args
    assert y.dtype == torch.float64
    scale_tril = torch.diag(theta.sqrt()) @ factor
    by_hand = (dist.HalfCauchy(torch.ones(5, dtype=y.dtype)).log_prob(theta).sum()
               + dist.LKJCholesky(5, torch.tensor(1.0, dtype=y.dtype)).log_prob(factor)
               + dist.MultivariateNormal(torch.zeros(5, dtype=y.dtype),
                                         scale_tril=scale_tril).log_prob(y).sum())  # fmt: skip
    torch.testing.assert_close(trace.log_prob_sum(), by_hand)


def test_neutra_banana_is_normalised_and_its_draws_are_its_own():
    target = pyro_neutra_banana()
    assert target.log_z == 0.0
    x, y = torch.meshgrid(torch.linspace(-8, 8, 801), torch.linspace(-6, 30, 1801),
                          indexing="ij")  # fmt: skip
    banana = poutine.trace(target.model).get_trace(*target.args).nodes["x"]["fn"]
    density = banana.log_prob(torch.stack([x, y], -1).double()).exp()
    area = (16 / 800) * (36 / 1800)
    assert float(density.sum() * area) == pytest.approx(1.0, abs=2e-3)
    for draws in target.reference:
        errors = (draws.mean(0) - target.ref_mean) / (target.ref_sd / math.sqrt(len(draws)))
        assert errors.abs().max() < 4.5
        assert (draws.std(0) / target.ref_sd - 1).abs().max() < 0.1


def test_the_time_to_accuracy_groups_hold_every_target_once():
    main, more = tta.GROUPS["main"], tta.GROUPS["more"]
    assert not set(main) & set(more)
    assert set(main) | set(more) == {*EXACT_TARGETS, *POSTERIORDB_TARGETS, *PYRO_EXAMPLES,
                                     *OTHER_PYRO_EXAMPLES}  # fmt: skip
    assert set(more) == {*SLOW_TARGETS, *OTHER_PYRO_EXAMPLES, "linreg_nig"}
    assert tta.parse(["--group", "more"]).out.name == "time-to-accuracy-more.md"


def test_elbo_estimate_scores_a_model_pyro_cannot_vectorize(monkeypatch):
    target = pyro_baseball()  # vectorizes: both ways are read, and must agree
    pyro.clear_param_store()
    guide = AutoNormal(target.model)
    guide(*target.args)
    pyro.set_rng_seed(0)
    vectorized, se = tta.elbo_estimate(target, guide, 2000)

    def cannot(*args, **kwargs):
        raise ValueError("Shape mismatch inside plate")

    monkeypatch.setattr(tta, "vectorized_importance_weights", cannot)
    pyro.set_rng_seed(1)
    fallen_back, se_back = tta.elbo_estimate(target, guide, 2000)
    assert abs(vectorized - fallen_back) < 4 * math.hypot(se, se_back)
    lkj = pyro_lkj()  # its batched scale_tril meets the draws plate
    pyro.clear_param_store()
    guide = AutoNormal(lkj.model)
    guide(*lkj.args)
    elbo, se = tta.elbo_estimate(lkj, guide, 50)
    assert math.isfinite(elbo)
    assert se > 0

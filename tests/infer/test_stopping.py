"""fit's stop rule: a run ends once KL(q||p) reads below tol, and only then."""

import inspect
import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer.autoguide import AutoNormal

from pyro_realnvp import AutoRealNVP
from pyro_realnvp.infer import NUM_STEPS, fit, fit_step, train
from pyro_realnvp.infer.stopping import Converged, stop_rule

COV = torch.tensor([[1.0, 0.8, 0.0], [0.8, 1.0, 0.3], [0.0, 0.3, 2.0]], dtype=torch.float64)


def gaussian():
    """An exact target, log Z = 0: the Laplace start is already the posterior."""
    pyro.sample("z", dist.MultivariateNormal(torch.ones(3, dtype=torch.float64), COV))


def banana():
    """Curved: a Gaussian start is far from it, and a few hundred steps do not close that."""
    x = pyro.sample("x", dist.Normal(torch.tensor(0.0, dtype=torch.float64), 2.0))
    pyro.sample("y", dist.Normal(0.5 * x**2 - 2.0, 0.3))


def fitted(model, num_steps=300, seed=0, **options):
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    guide = AutoRealNVP(model, num_layers=2)
    return guide, fit(model, guide, num_steps=num_steps, lr=0.01, progress=False, **options)


def kl(guide, model, num_draws=4000):
    """-ELBO from fresh draws: KL(q||p) where log Z = 0."""
    step, _ = fit_step(model, guide, num_steps=1, num_particles=8)
    step = getattr(step, "step", step)  # within its average, where there is one
    return -float(step.log_weights(num_draws).double().mean())


@pytest.mark.parametrize("seed", [0, 1])
def test_an_exact_guide_stops_early_at_a_check_and_ends_near_the_posterior(seed):
    guide, history = fitted(gaussian, num_steps=3000, seed=seed)
    assert history.stopped.startswith(f"converged at step {len(history)}:")
    every = 3000 // 30
    assert len(history) % every == 0
    assert 2 * every <= len(history) < 3000
    assert abs(kl(guide, gaussian)) < 5e-3
    draws = guide.get_posterior().sample((4000,)).double()
    assert torch.allclose(draws.mean(0), torch.ones(3, dtype=torch.float64), atol=0.1)
    assert torch.allclose(torch.cov(draws.T), COV, atol=0.15)


def test_fits_default_cap_is_what_the_benchmarks_run_and_a_fitted_posterior_stops_short():
    from benchmarks import accuracy, time_to_accuracy

    # The published tables are fit at its defaults only while these agree.
    for function in (fit, fit_step):
        assert inspect.signature(function).parameters["num_steps"].default == NUM_STEPS
    bench = accuracy.parse_args([])
    assert bench.steps == bench.pdb_steps == time_to_accuracy.parse([]).steps == NUM_STEPS
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    history = fit(gaussian, AutoRealNVP(gaussian, num_layers=2), progress=False)
    assert history.stopped
    assert len(history) <= NUM_STEPS // 5  # a cap, not a cost


def test_a_guide_still_far_from_the_posterior_takes_every_step():
    guide, history = fitted(banana, num_steps=300)
    assert len(history) == 300
    assert history.stopped == ""
    assert kl(guide, banana) > 1e-2  # what the rule read: far above its tol


def test_the_checks_leave_the_steps_unchanged_up_to_where_the_run_stops():
    _, never = fitted(banana, num_steps=120, stop=Converged(tol=1e-12, every=10))
    _, without = fitted(banana, num_steps=120, stop=None)
    assert never == without  # the checks draw from their own generator


def test_stop_none_and_another_guide_run_every_step():
    _, history = fitted(gaussian, num_steps=200, stop=None)
    assert len(history) == 200
    assert history.stopped == ""
    pyro.clear_param_store()
    history = fit(gaussian, AutoNormal(gaussian), num_steps=200, progress=False)
    assert len(history) == 200
    assert history.stopped == ""


def test_on_pyros_elbo_the_rule_reads_pyros_vectorized_weights():
    _, history = fitted(gaussian, num_steps=3000, fast=False)
    assert history.method == "svi"
    assert history.stopped.startswith(f"converged at step {len(history)}:")
    _, never = fitted(banana, num_steps=60, fast=False, stop=Converged(tol=1e-12, every=10))
    _, without = fitted(banana, num_steps=60, fast=False, stop=None)
    assert never == without  # its draws leave torch's generator as it was


def unvectorizable():
    z = pyro.sample("z", dist.Normal(torch.tensor(0.0, dtype=torch.float64), 1.0))
    if z.numel() > 1:
        raise ValueError("one draw at a time")
    pyro.sample("y", dist.Normal(z, 1.0), obs=torch.tensor(0.5, dtype=torch.float64))


def test_where_pyro_cannot_vectorize_the_model_every_step_runs():
    guide, history = fitted(unvectorizable, num_steps=300, fast=False, stop="converged")
    assert len(history) == 300
    assert history.stopped == ""
    assert guide.median()["z"].item() == pytest.approx(0.25, abs=0.1)  # it trained


def subsampled(data):
    """A location read 20 rows at a time: Pyro's log weights would read one minibatch."""
    mu = pyro.sample("mu", dist.Normal(torch.tensor(0.0, dtype=torch.float64), 10.0))
    with pyro.plate("rows", len(data), subsample_size=20) as rows:
        pyro.sample("y", dist.Normal(mu, 1.0), obs=data[rows])


def test_where_the_model_subsamples_the_rule_reads_nothing_and_every_step_runs(monkeypatch):
    # A check would score one random minibatch, scaled up: its log weights' spread is the
    # minibatch's, not KL(q||p), and reading it cost a hundred steps on a 10,000-row model.
    import pyro.infer.importance as importance

    from pyro_realnvp.infer import svi_step

    read = []
    original = importance.vectorized_importance_weights
    monkeypatch.setattr(svi_step, "vectorized_importance_weights",
                        lambda *a, **k: read.append(None) or original(*a, **k))  # fmt: skip
    data = 3.0 + torch.randn(500, dtype=torch.float64)
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    guide = AutoRealNVP(subsampled, num_layers=2)
    history = fit(subsampled, guide, data, num_steps=300, progress=False,
                  stop=Converged(tol=1e6, every=10))  # fmt: skip
    assert history.method == "svi"
    assert len(history) == 300
    assert history.stopped == ""
    assert read == []
    assert guide.median()["mu"].item() == pytest.approx(3.0, abs=0.3)  # it trained
    step, _ = fit_step(subsampled, guide, data, num_steps=1, fast=False)
    assert getattr(step, "step", step).log_weights(64) is None


def test_converged_checks_at_its_cadence_only_and_not_at_the_last_step():
    guide = AutoRealNVP(gaussian, num_layers=2)
    step, _ = fit_step(gaussian, guide, num_steps=100)
    rule = Converged(every=10, checks=2).bind(step, 100)
    assert [rule(n) for n in (1, 9, 11, 19)] == ["", "", "", ""]  # no check: no draws read
    reasons = [rule(n) for n in (10, 20)]
    assert reasons[0] == ""
    assert reasons[1].startswith("converged at step 20")
    assert rule(100) == ""  # the last step ends the run anyway: no reason to give


def test_train_keeps_why_it_stopped():
    class Count:
        name, value = "count", 0.0

        def __call__(self):
            self.value += 1.0
            return self.value

        def clear_grads(self):
            pass

    history = train(Count(), 10, progress=False, stop=lambda n: "enough" if n == 3 else "")
    assert history == [1.0, 2.0, 3.0]
    assert history.stopped == "enough"


@pytest.mark.parametrize(
    ("stop", "match"),
    [("yes", "stop must be None"), (1e-3, "stop must be None"), (True, "stop must be None")],
)
def test_a_wrong_stop_is_refused_before_any_set_up(stop, match):
    guide = AutoRealNVP(gaussian, num_layers=2)
    with pytest.raises(ValueError, match=match):
        fit(gaussian, guide, num_steps=10, progress=False, stop=stop)
    assert guide.prototype_trace is None


@pytest.mark.parametrize(
    ("options", "name"),
    [({"tol": 0.0}, "tol"), ({"tol": math.nan}, "tol"), ({"checks": 0}, "checks"),
     ({"every": 2.5}, "every"), ({"num_draws": -1}, "num_draws")],
)  # fmt: skip
def test_converged_refuses_a_bad_setting_naming_it(options, name):
    with pytest.raises(ValueError, match=f"Converged's {name} must be"):
        Converged(**options)


def test_auto_is_the_rule_for_a_flow_only():
    assert stop_rule("auto", flow=True) == Converged()
    assert stop_rule("auto", flow=False) is None
    assert stop_rule("converged", flow=False) == Converged()
    assert stop_rule(Converged(tol=0.1), flow=False) == Converged(tol=0.1)


def test_with_the_users_optim_the_rule_reads_the_same_weights():
    _, history = fitted(gaussian, num_steps=3000, optim=pyro.optim.Adam({"lr": 0.01}))
    assert history.method == "svi"
    assert history.stopped.startswith(f"converged at step {len(history)}:")

"""Bad-input battery, models: latent supports, shapes, plates, dtypes and models that raise.

Each case is a model a user could write, with what the ideal answer is for each thing a
user does with it: set the guide up (``guide(*args)``), draw from it, ``fit`` a few steps,
run Pyro's own ``SVI`` loop a few steps, read ``psis_khat`` and ``to_inference_data``. The
ideal answer is correct behaviour (finite losses, every latent site present, each value in
its support), or an error or warning whose message names the site. An answer that is
acceptable but not ideal is asserted as it is and marked weak (``Case.weak``, listed in
docs/battery.md); a gap found later asserts the ideal as a strict xfail (``Case.xfail``)
whose reason says ``BAD:`` or ``WEAK:`` and what the package does now.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.distributions import constraints
from pyro.infer import SVI, Trace_ELBO, TraceEnum_ELBO
from pyro.infer.autoguide import init_to_feasible, init_to_value
from pyro.nn import PyroModule, PyroSample
from pyro.optim import Adam

from pyro_realnvp import AutoRealNVP, NonFiniteLossError, fit, psis_khat, to_inference_data

TINY = {"num_layers": 2, "hidden_dims": (8,)}
Y = torch.tensor([0.3, -0.5, 1.2, 0.8])


# ---------------------------------------------------------------------------------------
# What a case expects of one call.


@dataclass(frozen=True)
class Works:
    """Correct behaviour: no error, finite results, every latent site, in its support."""


@dataclass(frozen=True)
class Raises:
    """An error of type ``error`` whose message holds every one of ``words``."""

    error: type[BaseException]
    words: tuple[str, ...]

    def __init__(self, error: type[BaseException], *words: str) -> None:
        object.__setattr__(self, "error", error)
        object.__setattr__(self, "words", words)


@dataclass(frozen=True)
class Warns:
    """A warning whose message holds every one of ``words``, and then correct behaviour."""

    words: tuple[str, ...]

    def __init__(self, *words: str) -> None:
        object.__setattr__(self, "words", words)


WORKS = Works()
Expect = Works | Raises | Warns


def mentions(message: str, word: str) -> bool:
    """Whether ``message`` holds ``word``: a quoted name (``"'y'"``) as ``'y'``, ``"y"``
    or ``site y``; any other word in any case."""
    if len(word) > 2 and word[0] == word[-1] == "'":
        name = word[1:-1]
        return any(form in message for form in (word, f'"{name}"', f"site {name} "))
    return word.lower() in message.lower()


def expect(outcome: Expect, call: Callable):
    """Run ``call`` and check ``outcome``; return its result where it returns."""
    if isinstance(outcome, Raises):
        with pytest.raises(outcome.error) as info:
            call()
        message = str(info.value)
        missing = [word for word in outcome.words if not mentions(message, word)]
        assert not missing, f"{missing} not in the message: {message}"
        return None
    if isinstance(outcome, Warns):
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            result = call()
        messages = [str(w.message) for w in record]
        assert any(all(mentions(m, w) for w in outcome.words) for m in messages), messages
        return result
    return call()


# ---------------------------------------------------------------------------------------
# The models.


def observe(fn, data):
    """Observe ``data`` at site ``y``, one row per element of its plate."""
    with pyro.plate("rows", len(data)):
        pyro.sample("y", fn, obs=data)


def discrete_bernoulli():
    p = pyro.sample("p", dist.Beta(2.0, 2.0))
    z = pyro.sample("z", dist.Bernoulli(p))
    pyro.sample("y", dist.Normal(z, 1.0), obs=torch.tensor(0.7))


def discrete_poisson():
    rate = pyro.sample("rate", dist.Gamma(2.0, 1.0))
    k = pyro.sample("k", dist.Poisson(rate))
    pyro.sample("y", dist.Normal(k, 1.0), obs=torch.tensor(2.0))


def discrete_categorical():
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    c = pyro.sample("c", dist.Categorical(torch.ones(3) / 3))
    pyro.sample("y", dist.Normal(mu + c, 1.0), obs=torch.tensor(1.0))


def enumerated_mixture():
    locs = pyro.sample("locs", dist.Normal(torch.tensor([-1.0, 1.0]), 1.0).to_event(1))
    with pyro.plate("data", len(Y)):
        c = pyro.sample("c", dist.Categorical(torch.ones(2) / 2), infer={"enumerate": "parallel"})
        pyro.sample("y", dist.Normal(locs[c], 1.0), obs=Y)


def improper_flat():
    x = pyro.sample("x", dist.ImproperUniform(constraints.real, (), ()))
    observe(dist.Normal(x, 1.0), Y)


def improper_positive():
    s = pyro.sample("s", dist.ImproperUniform(constraints.positive, (), ()))
    observe(dist.Normal(0.0, s), Y)


def ordered_vector():
    cuts = pyro.sample("cuts", dist.ImproperUniform(constraints.ordered_vector, (), (3,)))
    pyro.factor("prior", dist.Normal(0.0, 3.0).log_prob(cuts).sum())
    pyro.sample("y", dist.Normal(cuts[1], 1.0), obs=torch.tensor(0.5))


def von_mises_near_pi():
    angle = pyro.sample("angle", dist.VonMises(torch.tensor(3.1), torch.tensor(4.0)))
    pyro.sample("y", dist.VonMises(angle, torch.tensor(2.0)), obs=torch.tensor(-3.0))


def dependent_uniform():
    a = pyro.sample("a", dist.Normal(0.0, 1.0))
    b = pyro.sample("b", dist.Uniform(a, a + 1.0))
    pyro.sample("y", dist.Normal(b, 1.0), obs=torch.tensor(0.5))


def simplex_dirichlet():
    w = pyro.sample("w", dist.Dirichlet(torch.ones(3)))
    observe(dist.Categorical(w), torch.tensor([0, 2, 2]))


ROWS3 = torch.tensor([[0.1, 0.2, -0.3], [0.0, 0.4, 0.1]])


def corr_cholesky():
    L = pyro.sample("L", dist.LKJCholesky(3, 2.0))
    observe(dist.MultivariateNormal(torch.zeros(3), scale_tril=0.5 * L), ROWS3)


def corr_matrix():
    C = pyro.sample("C", dist.LKJ(3, 2.0))
    observe(dist.MultivariateNormal(torch.zeros(3), C), ROWS3)


def positive_definite():
    W = pyro.sample("W", dist.Wishart(df=torch.tensor(4.0), covariance_matrix=torch.eye(2)))
    observe(dist.MultivariateNormal(torch.zeros(2), W), ROWS3[:, :2])


def simplex_of_one():
    w = pyro.sample("w", dist.Dirichlet(torch.ones(1)))
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    observe(dist.Normal(mu + w[0], 1.0), Y)


def interval_beta():
    p = pyro.sample("p", dist.Beta(2.0, 5.0))
    observe(dist.Bernoulli(p), torch.tensor([1.0, 0.0, 0.0]))


def interval_uniform():
    u = pyro.sample("u", dist.Uniform(-2.0, 3.0))
    pyro.sample("y", dist.Normal(u, 0.5), obs=torch.tensor(2.9))


def lower_bounded_pareto():
    x = pyro.sample("x", dist.Pareto(1.0, 3.0))
    pyro.sample("y", dist.Normal(x, 1.0), obs=torch.tensor(2.0))


def zero_sized_beside_scalar():
    pyro.sample("empty", dist.Normal(torch.zeros(0), 1.0).to_event(1))
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    observe(dist.Normal(mu, 1.0), Y)


def zero_sized_only():
    e = pyro.sample("empty", dist.Normal(torch.zeros(0), 1.0).to_event(1))
    observe(dist.Normal(e.sum(), 1.0), Y)


def scalar_site():
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    observe(dist.Normal(mu, 1.0), Y)


def vector_site():
    w = pyro.sample("w", dist.Normal(torch.zeros(4), 1.0).to_event(1))
    pyro.sample("y", dist.Normal(w, 1.0).to_event(1), obs=Y)


def matrix_site():
    m = pyro.sample("m", dist.Normal(torch.zeros(2, 3), 1.0).to_event(2))
    pyro.sample("y", dist.Normal(m.sum(), 1.0), obs=torch.tensor(1.0))


def batch_without_plate():
    w = pyro.sample("w", dist.Normal(torch.zeros(4), 1.0))
    pyro.sample("y", dist.Normal(w, 1.0), obs=Y)


def unplated_observations():
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    pyro.sample("y", dist.Normal(mu, 1.0), obs=Y)  # four values, no plate, no to_event


def masked_latent():
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    pyro.sample("nuisance", dist.Normal(0.0, 1.0).mask(False))  # no density at all
    observe(dist.Normal(mu, 1.0), Y)


def float16_latents():
    half = torch.tensor(1.0, dtype=torch.float16)
    mu = pyro.sample("mu", dist.Normal(0.0 * half, half))
    observe(dist.Normal(mu, 1.0), Y.half())


def mixed_devices():
    a = pyro.sample("a", dist.Normal(0.0, 1.0))
    b = pyro.sample("b", dist.Normal(torch.tensor(0.0, device="cuda"), 1.0))
    pyro.sample("ya", dist.Normal(a, 1.0), obs=torch.tensor(0.5))
    pyro.sample("yb", dist.Normal(b, 1.0), obs=torch.tensor(0.5, device="cuda"))


def nested_plates():
    mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
    with pyro.plate("groups", 2):
        theta = pyro.sample("theta", dist.Normal(mu, 1.0))
        with pyro.plate("obs", 3):
            pyro.sample("y", dist.Normal(theta, 1.0), obs=torch.ones(3, 2))


def plate_at_dim_2():
    with pyro.plate("rows", 3, dim=-2):
        r = pyro.sample("r", dist.Normal(0.0, 1.0))
        with pyro.plate("cols", 2, dim=-1):
            pyro.sample("y", dist.Normal(r, 1.0), obs=torch.zeros(3, 2))


def subsample_global():
    data = torch.linspace(-1.0, 1.0, 20)
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    with pyro.plate("data", 20, subsample_size=5) as idx:
        pyro.sample("y", dist.Normal(mu, 1.0), obs=data[idx])


def subsample_local():
    data = torch.linspace(-1.0, 1.0, 20)
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    with pyro.plate("data", 20, subsample_size=5) as idx:
        z = pyro.sample("z", dist.Normal(mu, 1.0))
        pyro.sample("y", dist.Normal(z, 1.0), obs=data[idx])


def explicit_subsample_global():
    data = torch.linspace(-1.0, 1.0, 20)
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    with pyro.plate("data", 20, subsample=torch.tensor([0, 3, 7])) as idx:
        pyro.sample("y", dist.Normal(mu, 1.0), obs=data[idx])


def explicit_subsample_local():
    data = torch.linspace(-1.0, 1.0, 20)
    with pyro.plate("data", 20, subsample=torch.tensor([0, 3, 7])) as idx:
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("y", dist.Normal(z, 1.0), obs=data[idx])


def plate_too_small_for_data():
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    with pyro.plate("data", 3):
        pyro.sample("y", dist.Normal(mu, 1.0), obs=Y)


def plate_too_small_for_latent():
    with pyro.plate("groups", 3):
        theta = pyro.sample("theta", dist.Normal(torch.zeros(4), 1.0))
    pyro.sample("y", dist.Normal(theta.sum(), 1.0), obs=torch.tensor(1.0))


def float64_latents():
    mu = pyro.sample("mu", dist.Normal(torch.tensor(0.0, dtype=torch.float64), 1.0))
    observe(dist.Normal(mu, 1.0), Y.double())


def mixed_float32_float64():
    a = pyro.sample("a", dist.Normal(0.0, 1.0))
    b = pyro.sample("b", dist.Normal(torch.tensor(0.0, dtype=torch.float64), 1.0))
    observe(dist.Normal(a + b, 1.0), Y.double())


def float32_latent_float64_data():
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    observe(dist.Normal(mu, 1.0), Y.double())


def int_data():
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    observe(dist.Normal(mu, 1.0), torch.tensor([1, 2, 3]))


def model_raises_sometimes():
    x = pyro.sample("x", dist.Normal(0.0, 1.0))
    pyro.sample("y", dist.Normal(0.0, x), obs=torch.tensor(0.5))  # scale < 0 for x < 0


def model_raises_always():
    pyro.sample("x", dist.Normal(0.0, 1.0))
    raise RuntimeError("user's model is broken")


def nan_data():
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    observe(dist.Normal(mu, 1.0), torch.tensor([0.1, float("nan"), 0.3]))


def inf_data():
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    observe(dist.Normal(mu, 1.0), torch.tensor([0.1, float("inf"), 0.3]))


def obs_outside_support():
    rate = pyro.sample("rate", dist.Gamma(2.0, 1.0))
    observe(dist.Exponential(rate), torch.tensor([0.5, -1.0]))


def exp_overflow():
    x = pyro.sample("x", dist.Normal(0.0, 30.0))
    observe(dist.Poisson(torch.exp(10.0 * x)), torch.tensor([3.0, 1.0]))


def with_param():
    sigma = pyro.param("sigma", torch.tensor(1.0), constraint=constraints.positive)
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    observe(dist.Normal(mu, sigma), Y)


def with_deterministic():
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    pyro.deterministic("mu2", mu * 2.0)
    observe(dist.Normal(mu, 1.0), Y)


def with_factor():
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    pyro.factor("pull", -0.5 * (mu - 1.0) ** 2)
    observe(dist.Normal(mu, 1.0), Y)


def with_nan_factor():
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    pyro.factor("broken", mu * float("nan"))


class Regression(PyroModule):
    def __init__(self) -> None:
        super().__init__()
        self.linear = PyroModule[torch.nn.Linear](2, 1)
        self.linear.weight = PyroSample(dist.Normal(0.0, 1.0).expand([1, 2]).to_event(2))
        self.linear.bias = PyroSample(dist.Normal(0.0, 1.0).expand([1]).to_event(1))

    def forward(self, x, y=None):
        mean = self.linear(x).squeeze(-1)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("y", dist.Normal(mean, 1.0), obs=y)


X_REG = torch.tensor([[0.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
Y_REG = torch.tensor([0.5, -0.2, 0.4])


def no_latents():
    observe(dist.Normal(0.0, 1.0), Y)


def sites_change_with_values():
    x = pyro.sample("x", dist.Normal(0.0, 1.0))
    if x > 0:
        z = pyro.sample("z", dist.Normal(x, 1.0))
    else:
        z = pyro.sample("w", dist.Normal(x, 1.0))
    pyro.sample("y", dist.Normal(z, 1.0), obs=torch.tensor(0.5))


def shape_changes_with_values():
    x = pyro.sample("x", dist.Normal(0.0, 1.0))
    n = 2 if x > 0 else 3
    z = pyro.sample("z", dist.Normal(torch.zeros(n), 1.0).to_event(1))
    pyro.sample("y", dist.Normal(z.sum(), 1.0), obs=torch.tensor(0.5))


def float_of_data(data):
    mu = pyro.sample("mu", dist.Normal(float(data.mean()), 1.0))
    observe(dist.Normal(mu, data.std().item()), data)


def item_of_latent():
    s = pyro.sample("s", dist.LogNormal(0.0, 1.0))
    observe(dist.Normal(0.0, s.item()), Y)  # cuts the gradient to s


def float_of_latent():
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    observe(dist.Normal(math.tanh(float(mu)), 1.0), Y)


def delta_latent():
    d = pyro.sample("d", dist.Delta(torch.tensor(1.0)))
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    observe(dist.Normal(mu + d, 1.0), Y)


def masked_observations():
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    mask = torch.tensor([True, False, True, True])
    with pyro.plate("data", 4):
        pyro.sample("y", dist.Normal(mu, 1.0), obs=Y, obs_mask=mask)


def other_model():
    pyro.sample("alpha", dist.Normal(0.0, 1.0))
    pyro.sample("beta", dist.Normal(torch.zeros(2), 1.0).to_event(1))


def same_names_other_shapes():
    mu = pyro.sample("mu", dist.Normal(torch.zeros(3), 1.0).to_event(1))
    observe(dist.Normal(mu.sum(), 1.0), Y)


# ---------------------------------------------------------------------------------------
# The cases.


@dataclass(frozen=True)
class Case:
    """A model, what it takes, and the ideal answer to each call (``None``: not asked)."""

    model: Callable
    latents: tuple[str, ...]  # the latent sites the guide should give, set up as it is
    args: tuple = ()
    options: dict = field(default_factory=dict)  # AutoRealNVP's, beside TINY
    loss: Callable[[], object] = Trace_ELBO  # what Pyro's SVI loop uses
    fit_options: dict = field(default_factory=dict)
    validate: bool = True
    set_up_with: Callable | None = None  # another model the guide is set up with first
    deterministic: tuple[str, ...] = ()  # sites to_inference_data should add
    setup: Expect | None = WORKS
    draws: Expect | None = WORKS
    fit: Expect | None = WORKS
    svi: Expect | None = WORKS
    khat: Expect | None = None
    idata: Expect | None = None
    xfail: dict = field(default_factory=dict)  # call -> "BAD: ..." or "WEAK: ..."
    weak: dict = field(default_factory=dict)  # call -> why its answer, asserted, stays
    marks: tuple = ()


def refused(error: type[BaseException], *words: str, **rest) -> dict:
    """Set-up, ``fit`` and Pyro's SVI all refuse the model with one named error."""
    outcome = Raises(error, *words)
    return {"setup": outcome, "draws": None, "fit": outcome, "svi": outcome, **rest}


def enum_loss() -> TraceEnum_ELBO:
    return TraceEnum_ELBO(max_plate_nesting=1)


NO_VALUE = "ImproperUniform"  # a site whose distribution cannot be sampled
CASES: dict[str, Case] = {
    # Latent supports.
    "discrete-bernoulli": Case(discrete_bernoulli, ("p",), **refused(ValueError, "'z'")),
    "discrete-poisson": Case(discrete_poisson, ("rate",), **refused(ValueError, "'k'")),
    "discrete-categorical": Case(discrete_categorical, ("mu",), **refused(ValueError, "'c'")),
    "enumerated-traceenum": Case(
        enumerated_mixture, ("locs",), loss=enum_loss, fit_options={"loss": enum_loss()},
        khat=Raises(ValueError, "'c'"), idata=Warns("'c'"),
    ),
    "enumerated-fit-default-loss": Case(
        enumerated_mixture, ("locs",), setup=None, draws=None, svi=None,
        fit=Warns("'c'", "TraceEnum_ELBO"),
    ),
    "enumerated-svi-trace-elbo": Case(
        enumerated_mixture, ("locs",), setup=None, draws=None, fit=None, svi=Warns("'c'")
    ),
    "improper-default-init": Case(
        improper_flat, ("x",), **refused(ValueError, "'x'", NO_VALUE, "init_to_value")
    ),
    "improper-init-to-feasible": Case(
        improper_flat, ("x",), options={"init_loc_fn": init_to_feasible},
        **refused(ValueError, "'x'", NO_VALUE, "init_to_value"),
    ),
    "improper-init-to-value": Case(
        improper_positive, ("s",),
        options={"init_loc_fn": init_to_value(values={"s": torch.tensor(1.0)})}, khat=WORKS,
    ),
    "improper-init-to-value-missing": Case(
        improper_positive, ("s",), options={"init_loc_fn": init_to_value(values={})},
        **refused(ValueError, "'s'", NO_VALUE, "init_to_value"),
    ),
    "ordered-vector-init-to-value": Case(
        ordered_vector, ("cuts",),
        options={"init_loc_fn": init_to_value(values={"cuts": torch.tensor([-1.0, 0.0, 1.0])})},
        khat=WORKS, idata=WORKS,
    ),
    "ordered-vector-init-to-feasible": Case(
        ordered_vector, ("cuts",), options={"init_loc_fn": init_to_feasible},
        **refused(ValueError, "'cuts'", "init_to_value"),
    ),
    "von-mises-near-pi": Case(
        von_mises_near_pi, ("angle",), setup=Warns("'angle'", "pi"), khat=WORKS
    ),
    "support-depends-on-latent": Case(
        dependent_uniform, ("a", "b"), **refused(ValueError, "'b'", "reparameterize")
    ),
    "simplex": Case(simplex_dirichlet, ("w",), idata=WORKS),
    "simplex-of-one": Case(
        simplex_of_one, ("w", "mu"), draws=None,
    ),
    "corr-cholesky": Case(corr_cholesky, ("L",), idata=WORKS),
    "lkj-corr-matrix": Case(corr_matrix, ("C",), idata=WORKS),
    "positive-definite": Case(
        positive_definite, ("W",), **refused(ValueError, "'W'", "reparameterize")
    ),
    "interval-beta": Case(interval_beta, ("p",), khat=WORKS),
    "interval-uniform-at-edge": Case(interval_uniform, ("u",)),
    "lower-bounded-pareto": Case(lower_bounded_pareto, ("x",)),
    "zero-sized-beside-scalar": Case(
        zero_sized_beside_scalar, ("empty", "mu"), draws=None, idata=WORKS,
    ),
    "zero-sized-only": Case(
        zero_sized_only, ("empty",), **refused(RuntimeError, "'empty'", "no latent"),
    ),
    "scalar-site": Case(scalar_site, ("mu",), khat=WORKS, idata=WORKS),
    "vector-site": Case(vector_site, ("w",), idata=WORKS),
    "matrix-site": Case(matrix_site, ("m",), idata=WORKS),
    "latent-batch-without-plate": Case(
        batch_without_plate, ("w",),
        fit=Raises(ValueError, "'w'", "plate"), svi=Raises(ValueError, "'w'", "plate"),
    ),
    "observed-batch-without-plate": Case(
        unplated_observations, ("mu",), setup=Raises(ValueError, "'y'", "plate"), draws=None,
        fit=Raises(ValueError, "'y'", "plate"), svi=Raises(ValueError, "'y'", "plate"),
    ),
    "delta-latent": Case(
        delta_latent, ("d", "mu"), **refused(ValueError, "'d'", "deterministic")
    ),
    "masked-latent": Case(masked_latent, ("mu", "nuisance"), setup=Warns("'nuisance'")),
    "float16-latents": Case(
        float16_latents, ("mu",), **refused(ValueError, "'mu'", "float16"),
    ),
    "mixed-devices": Case(
        mixed_devices, ("a", "b"), **refused(ValueError, "'a'", "'b'", "device"),
        marks=(pytest.mark.cuda,),
    ),
    # Plates.
    "nested-plates": Case(nested_plates, ("mu", "theta"), khat=WORKS, idata=WORKS),
    "plate-at-dim-2": Case(plate_at_dim_2, ("r",), khat=WORKS, idata=WORKS),
    "subsample-global": Case(subsample_global, ("mu",), khat=WORKS, idata=WORKS),
    "subsample-local": Case(
        subsample_local, ("mu", "z"), **refused(ValueError, "'z'", "'data'", "AutoNormal")
    ),
    "explicit-subsample-global": Case(
        explicit_subsample_global, ("mu",),
        khat=Raises(ValueError, "'y'", "'data'", "all its rows"),
    ),
    "explicit-subsample-local": Case(
        explicit_subsample_local, ("z",), **refused(ValueError, "'z'", "'data'", "AutoNormal")
    ),
    "plate-smaller-than-data": Case(
        plate_too_small_for_data, ("mu",), **refused(ValueError, "'y'", "broadcast"),
    ),
    "plate-smaller-than-latent": Case(
        plate_too_small_for_latent, ("theta",), **refused(ValueError, "'theta'", "'groups'")
    ),
    "masked-observations": Case(
        masked_observations, ("mu", "y_unobserved"), setup=Warns("'y_unobserved'"),
        idata=WORKS,
    ),
    # Dtypes.
    "float64-latents": Case(float64_latents, ("mu",), khat=WORKS, idata=WORKS),
    "mixed-float32-float64": Case(
        mixed_float32_float64, ("a", "b"), **refused(ValueError, "'a'", "'b'", "dtype")
    ),
    "float32-latent-float64-data": Case(
        float32_latent_float64_data, ("mu",), khat=WORKS, idata=WORKS,
    ),
    "int-data": Case(int_data, ("mu",)),
    # Models that raise; non-finite data; overflow.
    "raises-at-some-values": Case(
        model_raises_sometimes, ("x",), **refused(ValueError, "'y'", "x=", fit=WORKS),
    ),
    "raises-always": Case(
        model_raises_always, ("x",), **refused(RuntimeError, "user's model is broken")
    ),
    "nan-data-validated": Case(
        nan_data, ("mu",), **refused(ValueError, "'y'", "nan"),
    ),
    "nan-data-unvalidated": Case(
        nan_data, ("mu",), validate=False, **refused(ValueError, "'y'", "nan"),
    ),
    "inf-data-validated": Case(
        inf_data, ("mu",), **refused(ValueError, "'y'", "infinite"),
    ),
    "inf-data-unvalidated": Case(
        inf_data, ("mu",), validate=False, **refused(ValueError, "'y'", "infinite"),
    ),
    "obs-outside-support-validated": Case(
        obs_outside_support, ("rate",), **refused(ValueError, "'y'", "support"),
    ),
    "obs-outside-support-unvalidated": Case(
        obs_outside_support, ("rate",), validate=False, **refused(ValueError, "'y'", "support"),
    ),
    # init_to_median's x = -12.1 underflows the rate: the start searches from x = 0.
    "exp-overflow": Case(exp_overflow, ("x",), setup=Warns("'y'", "init_to_feasible")),
    # pyro.param, pyro.deterministic, pyro.factor, PyroModule.
    "pyro-param-site": Case(with_param, ("mu",), khat=WORKS, idata=WORKS),
    "deterministic-site": Case(
        with_deterministic, ("mu",), deterministic=("mu2",), khat=WORKS, idata=WORKS
    ),
    "factor-site": Case(
        with_factor, ("mu",), khat=WORKS, idata=WORKS,
    ),
    "nan-factor": Case(
        with_nan_factor, ("mu",),
        **refused(ValueError, "'broken'", fit=Raises(NonFiniteLossError, "'broken'")),
    ),
    "pyromodule-pyrosample": Case(
        Regression(), ("linear.weight", "linear.bias"), args=(X_REG, Y_REG), khat=WORKS,
        idata=WORKS,
    ),
    # The model's structure.
    "no-latent-sites": Case(no_latents, (), **refused(RuntimeError, "no latent")),
    "sites-change-with-values": Case(
        sites_change_with_values, ("x", "w"), draws=None, svi=None,
        fit=Raises(ValueError, "'z'", "'w'", "latent values"),
    ),
    "shape-changes-with-values": Case(
        shape_changes_with_values, ("x", "z"), svi=None,
        fit=Raises(ValueError, "'z'", "shape"),
    ),
    "float-of-data": Case(float_of_data, ("mu",), args=(Y,), khat=WORKS),
    "item-of-latent": Case(
        item_of_latent, ("s",), setup=Warns("'s'"), svi=None, fit=Warns("'s'", "gradient"),
    ),
    "float-of-latent": Case(
        float_of_latent, ("mu",), setup=Warns("'mu'"), svi=None,
        fit=Warns("'mu'", "gradient"),
    ),
    "guide-for-other-model": Case(
        scalar_site, ("mu",), set_up_with=other_model, setup=None, draws=None,
        fit=Raises(ValueError, "'mu'", "'alpha'"), svi=Warns("'mu'"),
    ),
    "guide-for-other-shapes": Case(
        scalar_site, ("mu",), set_up_with=same_names_other_shapes, setup=None, draws=None,
        fit=Raises(ValueError, "'mu'", "shape"),
        svi=Raises(ValueError, "'y'", "Shape mismatch inside plate('rows')"),
        weak={"svi": "Pyro's SVI replays the guide into a model the guide cannot see: "
                     "Pyro's own error names the plate and site 'y', not the guide's 'mu'"},
    ),
}  # fmt: skip


def params(prop: str) -> list:
    """The cases that ask ``prop``, each with its marks and strict xfail where it has one."""
    chosen = []
    for name, case in CASES.items():
        if getattr(case, prop) is None:
            continue
        marks = list(case.marks)
        if prop in case.xfail:
            marks.append(pytest.mark.xfail(strict=True, reason=case.xfail[prop]))
        if prop in case.weak:
            marks.append(pytest.mark.weak(case.weak[prop]))
        if prop != "setup" and case.setup is not WORKS:
            # What set-up says is the set-up test's to check; here it would only repeat.
            marks.append(pytest.mark.filterwarnings("ignore::UserWarning"))
        chosen.append(pytest.param(case, id=name, marks=marks))
    return chosen


# ---------------------------------------------------------------------------------------
# Shared checks.


@pytest.fixture(autouse=True)
def fresh_state():
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    yield
    pyro.clear_param_store()


def make_guide(case: Case) -> AutoRealNVP:
    if case.set_up_with is not None:
        guide = AutoRealNVP(case.set_up_with, **TINY)
        guide()
        return guide
    return AutoRealNVP(case.model, **TINY, **case.options)


def check_in_support(case: Case, values: dict) -> None:
    """Every latent site of ``case`` is in ``values``, finite, and inside its support
    where the model, replayed at ``values``, puts it."""
    assert set(values) == set(case.latents)
    trace = poutine.trace(poutine.condition(case.model, values)).get_trace(*case.args)
    for name in case.latents:
        value, support = values[name], trace.nodes[name]["fn"].support
        assert bool(torch.isfinite(value).all()), name
        assert bool(torch.as_tensor(support.check(value)).all()), (name, value, support)


def check_losses(losses) -> None:
    assert len(losses) == 3
    assert all(math.isfinite(loss) for loss in losses), list(losses)


@pytest.mark.parametrize("case", params("setup"))
def test_setup_gives_every_latent_in_its_support(case: Case):
    with pyro.validation_enabled(case.validate):
        guide = make_guide(case)
        values = expect(case.setup, lambda: guide(*case.args))
        if values is not None:
            check_in_support(case, values)


@pytest.mark.parametrize("case", params("draws"))
def test_draws_stay_in_their_support(case: Case):
    with pyro.validation_enabled(case.validate):
        guide = make_guide(case)
        guide(*case.args)
        with torch.no_grad():
            guide.scale.unconstrained().add_(2.0)  # wide draws reach the support's edges

        def draw_many():
            for _ in range(20):
                check_in_support(case, guide(*case.args))

        expect(case.draws, draw_many)


@pytest.mark.parametrize("case", params("fit"))
def test_fit_a_few_steps(case: Case):
    with pyro.validation_enabled(case.validate):
        guide = make_guide(case)
        losses = expect(case.fit, lambda: fit(case.model, guide, *case.args, num_steps=3,
                                               progress=False, **case.fit_options))  # fmt: skip
        if losses is not None:
            check_losses(losses)


@pytest.mark.parametrize("case", params("svi"))
def test_pyro_svi_a_few_steps(case: Case):
    with pyro.validation_enabled(case.validate):
        guide = make_guide(case)
        svi = SVI(case.model, guide, Adam({"lr": 0.01}), case.loss())
        losses = expect(case.svi, lambda: [svi.step(*case.args) for _ in range(3)])
        if losses is not None:
            check_losses(losses)


@pytest.mark.parametrize("case", params("khat"))
def test_psis_khat_reads(case: Case):
    with pyro.validation_enabled(case.validate):
        guide = make_guide(case)
        guide(*case.args)
        khat = expect(case.khat, lambda: psis_khat(case.model, guide, *case.args,
                                                   num_samples=20, num_sets=2))  # fmt: skip
        if khat is not None:
            assert not math.isnan(float(khat))


@pytest.mark.parametrize("case", params("idata"))
def test_inference_data_has_every_latent(case: Case):
    with pyro.validation_enabled(case.validate):
        guide = make_guide(case)
        guide(*case.args)
        idata = expect(
            case.idata,
            lambda: to_inference_data(case.model, guide, *case.args, num_samples=10, num_chains=2),
        )
        if idata is not None:
            posterior = idata.posterior
            wanted = case.latents + case.deterministic
            assert set(wanted) <= set(posterior.data_vars), list(posterior.data_vars)
            for name in wanted:
                assert posterior[name].shape[:2] == (2, 10)
                assert bool(torch.isfinite(torch.as_tensor(posterior[name].values)).all())

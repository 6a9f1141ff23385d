"""posteriordb's linear and log-linear regressions in Pyro: Gelman and Hill's earnings,
kidiq (with and without mom_work), mesquite and National Election Study (seven years, one
program) regressions, and the pathfinder paper's Bayesian linear regression (sblrc).

Every program is ``y ~ normal(beta[1] + beta[2] * x2 + ... , sigma)``; here that is one
design matrix ``X`` (first column ones, the rest the program's predictors) and
``y ~ normal(X beta, sigma)``. The programs differ only in their priors, so one Pyro
function serves each set of priors. Transformed data (logs, interactions, centring,
indicators of a factor) are computed in float64 by the ``make_args`` of each row, as the
Stan program's ``transformed data`` block does. Latents carry any leading particle
dimensions (no plates), so ``max_plate_nesting=0``.
"""

from __future__ import annotations

from collections.abc import Callable

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from torch import Tensor

from .common import Spec, as_tensor, flat

__all__ = ["SPECS", "blr", "kidiq", "linear_regression"]


def _likelihood(y: Tensor, X: Tensor, beta: Tensor, sigma: Tensor) -> None:
    pyro.sample("y", dist.Normal(beta @ X.T, sigma[..., None]).to_event(1), obs=y)


def linear_regression(y: Tensor, X: Tensor) -> None:
    """Stan's implicit flat priors on ``vector[K] beta`` and ``real<lower=0> sigma``: the
    earnings, kidiq_with_mom_work, mesquite and nes programs."""
    beta = pyro.sample("beta", flat(constraints.real, event_shape=(X.shape[1],)))
    sigma = pyro.sample("sigma", flat(constraints.positive))
    _likelihood(y, X, beta, sigma)


def kidiq(y: Tensor, X: Tensor) -> None:
    """Flat ``beta``, ``sigma ~ cauchy(0, 2.5)`` on ``sigma > 0``: the kidiq programs."""
    beta = pyro.sample("beta", flat(constraints.real, event_shape=(X.shape[1],)))
    sigma = pyro.sample("sigma", dist.HalfCauchy(2.5))
    _likelihood(y, X, beta, sigma)


def blr(y: Tensor, X: Tensor) -> None:
    """``beta ~ normal(0, 10)``, ``sigma ~ normal(0, 10)`` on ``sigma > 0``; ``X`` is the
    data's own design matrix (no intercept column)."""
    beta = pyro.sample("beta", dist.Normal(0.0, 10.0).expand([X.shape[1]]).to_event(1))
    sigma = pyro.sample("sigma", dist.HalfNormal(10.0))
    _likelihood(y, X, beta, sigma)


#: The response, or the predictors, as a function of the data (float64 tensors by name).
Column = Callable[[dict[str, Tensor]], Tensor]
Columns = Callable[[dict[str, Tensor]], tuple[Tensor, ...]]


def _args(response: Column, predictors: Columns):
    """``make_args`` giving ``(y, X)``: ``y = response(d)`` and ``X = [1, predictors(d)]``,
    on the data ``d`` as float64 tensors, then cast to torch's default dtype."""

    def make_args(data: dict) -> tuple[Tensor, Tensor]:
        d = {key: torch.tensor(value, dtype=torch.float64) for key, value in data.items()}
        y = response(d)
        X = torch.stack([torch.ones_like(y), *predictors(d)], dim=-1)
        dtype = torch.get_default_dtype()
        return y.to(dtype), X.to(dtype)

    return make_args


def _regression(folder: str, model: Callable, response: Column, predictors: Columns, K: int):
    return Spec(folder, model, _args(response, predictors), (("beta", K), ("sigma", 1)))


def _earnings(model: str, response: Column, predictors: Columns, K: int) -> Spec:
    return _regression(f"earnings-{model}", linear_regression, response, predictors, K)


def _log_earn(d):
    return d["earn"].log()


def _kidiq(model: str, predictors: Columns, K: int) -> Spec:
    return _regression(f"kidiq-{model}", kidiq, lambda d: d["kid_score"], predictors, K)


def _mom_work(model: str, predictors: Columns) -> Spec:
    folder = f"kidiq_with_mom_work-{model}"
    return _regression(folder, linear_regression, lambda d: d["kid_score"], predictors, 4)


def _interaction(first: Tensor, second: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Two predictors and their product (Stan's ``inter = first .* second``)."""
    return first, second, first * second


def _levels(factor: Tensor, levels) -> tuple[Tensor, ...]:
    """Indicators ``factor == level`` (Stan's ``work2[i] = mom_work[i] == 2``)."""
    return tuple((factor == level).double() for level in levels)


def _mesquite(model: str, response: Column, predictors: Columns, K: int) -> Spec:
    return _regression(f"mesquite-{model}", linear_regression, response, predictors, K)


def _log_weight(d):
    return d["weight"].log()


def _canopy(d) -> tuple[Tensor, Tensor, Tensor]:
    """log canopy volume, area and shape: ``log(diam1 .* diam2 .* canopy_height)``,
    ``log(diam1 .* diam2)``, ``log(diam1 ./ diam2)``."""
    area = d["diam1"] * d["diam2"]
    return (area * d["canopy_height"]).log(), area.log(), (d["diam1"] / d["diam2"]).log()


_MESQUITE = ("diam1", "diam2", "canopy_height", "total_height", "density")


def _nes(year: int) -> Spec:
    """The nes program on one year's survey: age (a four-level factor) as indicators."""

    def predictors(d):
        age = _levels(d["age_discrete"], (2, 3, 4))
        front = (d["real_ideo"], d["race_adj"])
        return (*front, *age, d["educ1"], d["gender"], d["income"])

    return _regression(f"nes{year}-nes", linear_regression, lambda d: d["partyid7"], predictors, 9)


#: Row label -> the translation.
SPECS: dict[str, Spec] = {
    "earn_height": _earnings("earn_height", lambda d: d["earn"], lambda d: (d["height"],), 2),
    "log10earn_height": _earnings(
        "log10earn_height", lambda d: d["earn"].log10(), lambda d: (d["height"],), 2
    ),
    "logearn_height": _earnings("logearn_height", _log_earn, lambda d: (d["height"],), 2),
    "logearn_height_male": _earnings(
        "logearn_height_male", _log_earn, lambda d: (d["height"], d["male"]), 3
    ),
    "logearn_interaction": _earnings(
        "logearn_interaction", _log_earn, lambda d: _interaction(d["height"], d["male"]), 4
    ),
    "logearn_logheight_male": _earnings(
        "logearn_logheight_male", _log_earn, lambda d: (d["height"].log(), d["male"]), 3
    ),
    "kidscore_interaction": _kidiq(
        "kidscore_interaction", lambda d: _interaction(d["mom_hs"], d["mom_iq"]), 4
    ),
    "kidscore_momhs": _kidiq("kidscore_momhs", lambda d: (d["mom_hs"],), 2),
    "kidscore_momhsiq": _kidiq("kidscore_momhsiq", lambda d: (d["mom_hs"], d["mom_iq"]), 3),
    "kidscore_momiq": _kidiq("kidscore_momiq", lambda d: (d["mom_iq"],), 2),
    "kidscore_interaction_c": _mom_work(
        "kidscore_interaction_c",
        lambda d: _interaction(d["mom_hs"] - d["mom_hs"].mean(), d["mom_iq"] - d["mom_iq"].mean()),
    ),
    "kidscore_interaction_c2": _mom_work(
        "kidscore_interaction_c2", lambda d: _interaction(d["mom_hs"] - 0.5, d["mom_iq"] - 100)
    ),
    "kidscore_mom_work": _mom_work(
        "kidscore_mom_work", lambda d: _levels(d["mom_work"], (2, 3, 4))
    ),
    "logmesquite": _mesquite(
        "logmesquite",
        _log_weight,
        lambda d: (*(d[key].log() for key in _MESQUITE), d["group"]),
        7,
    ),
    "logmesquite_logva": _mesquite(
        "logmesquite_logva", _log_weight, lambda d: (*_canopy(d)[:2], d["group"]), 4
    ),
    "logmesquite_logvas": _mesquite(
        "logmesquite_logvas",
        _log_weight,
        lambda d: (*_canopy(d), d["total_height"].log(), d["density"].log(), d["group"]),
        7,
    ),
    "logmesquite_logvolume": _mesquite(
        "logmesquite_logvolume", _log_weight, lambda d: _canopy(d)[:1], 2
    ),
    "mesquite": _mesquite(
        "mesquite", lambda d: d["weight"], lambda d: (*(d[k] for k in _MESQUITE), d["group"]), 7
    ),
    **{f"nes{year}": _nes(year) for year in range(1972, 1997, 4)},
    "sblrc_blr": Spec(
        "sblrc-blr",
        blr,
        lambda d: (as_tensor(d["y"]), as_tensor(d["X"])),
        (("beta", 5), ("sigma", 1)),
    ),
}

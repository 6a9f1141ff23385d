"""Where a guide's affine starts: a Gaussian found for its model at set-up."""

from __future__ import annotations

import logging

from pyro import poutine
from torch import Tensor

from .._internal.locate import warn_at_user
from .laplace import GaussianStart, laplace_start, local_start
from .potential import Potential, finite_start, hold_hidden
from .sites import bad_curvature_warning

__all__ = ["gaussian_start"]

_log = logging.getLogger(__package__)  # "pyro_realnvp.guide", as AutoRealNVP's


def gaussian_start(guide, init_loc: Tensor, run: poutine.Trace, args: tuple,
                   kwargs: dict) -> GaussianStart:  # fmt: skip
    """The start of an :class:`~pyro_realnvp.AutoRealNVP` being set up: with
    ``init_loc_fn`` given, a local Gaussian at its values; else the Laplace start by the
    guide's start rule, its mode searched for from ``init_loc`` (or, where the model's
    log-density is not finite there, from ``init_to_feasible``'s point). ``run`` is the
    model's run at the prototype (:func:`~pyro_realnvp.guide.potential.prototype_run`).

    Example:
        >>> import pyro, pyro.distributions as dist
        >>> from pyro_realnvp import AutoRealNVP
        >>> guide = AutoRealNVP(lambda: pyro.sample("x", dist.Normal(3.0, 2.0)))
        >>> _ = guide()
        >>> guide.start.kind, round(float(guide.start.scale), 3)
        ('laplace', 2.0)
    """
    model = hold_hidden(guide._bare, run, guide.prototype_trace)
    potential = Potential(model, guide, args, kwargs, full_data=True)
    if not guide._find_mode:
        return local_start(potential, init_loc)
    point, bad = finite_start(potential, init_loc)
    if bad:
        where = "init_to_feasible's instead" if point is not init_loc else "there all the same"
        warn_at_user(f"the model's log-density is not finite at site(s) {bad} at "
                     f"init_to_median's values: the mode is searched for from {where} "
                     "(init_loc_fn=init_to_value(values={...}) starts it elsewhere)")  # fmt: skip
    init_loc = point
    rule = getattr(guide, "start_rule", "auto")  # a guide pickled before it had one
    if rule == "auto":
        rule = getattr(guide, "_auto_start_rule", "elbo")
    start = laplace_start(potential, init_loc, dense=guide._dense, rule=rule)
    _log.info("AutoRealNVP starts from the %s Gaussian (ELBO %.4g)", start.kind, start.elbo)
    if start.kind.startswith("laplace") and bool(start.bad.any()):
        warn_at_user(bad_curvature_warning(start.bad, guide._unconstrained_shapes))
    return start

"""zuko's RealNVP as a Pyro autoguide, through ``pyro.contrib.zuko.ZukoToPyro``.

Pyro's flow tutorials now point users to zuko (its own flows are no longer developed),
so the benchmark compares against zuko's RealNVP too. zuko is an optional ``bench``
extra, not a dependency of the package: it is imported only when a guide is built.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from types import ModuleType

import pyro
from pyro.infer.autoguide import AutoContinuous
from pyro.infer.autoguide.initialization import init_to_feasible
from torch.distributions import Distribution

__all__ = ["AutoZukoRealNVP", "import_zuko", "zuko_available"]


def zuko_available() -> bool:
    """Whether zuko can be imported (without importing it)."""
    return importlib.util.find_spec("zuko") is not None


def import_zuko() -> ModuleType:
    """Import zuko, undoing its switch-off of torch's distribution validation.

    Importing zuko 1.6 sets ``torch.distributions.Distribution._validate_args = False``
    for the whole process, so after the first zuko guide every later fit in the same
    benchmark worker (or test session) would run without Pyro's argument checks. The
    previous default is put back; zuko's other import-time change,
    ``Distribution.arg_constraints = {}``, is kept, since zuko's own distributions do not
    declare ``arg_constraints`` and would otherwise warn on every construction.

    Example:
        >>> before = Distribution._validate_args
        >>> zuko = import_zuko()
        >>> Distribution._validate_args == before
        True
    """
    if not zuko_available():
        raise ImportError(
            "the 'zuko RealNVP' benchmark guide needs zuko: pip install -e '.[bench]'"
        )
    validate = Distribution._validate_args
    try:
        return importlib.import_module("zuko")
    finally:
        Distribution.set_default_validate_args(validate)


class AutoZukoRealNVP(AutoContinuous):
    r"""zuko's ``RealNVP`` over the packed unconstrained latent :math:`u`:
    :math:`q(u) = \mathcal N(f(u); 0, I)\,|\det \partial f / \partial u|`.

    The posterior is ``ZukoToPyro(flow())``, as Pyro's "SVI with a normalizing flow
    guide" tutorial builds it. The flow is a sub-module of the guide, so reading
    ``self.flow`` inside the guide registers its weights with ``pyro.module`` and SVI's
    optimizer trains them. Sampling uses zuko's ``rsample_and_log_prob`` (one pass), and
    ``ZukoToPyro.expand`` gives the batched distribution that vectorized particles need.

    Args:
        model: A Pyro model.
        init_loc_fn: Only sets the prototype trace (as for Pyro's ``AutoIAFNormal``):
            the flow starts from zuko's own initialisation around a standard normal.
        **flow_options: Passed to ``zuko.flows.RealNVP``; with none, zuko 1.6's defaults:
            ``transforms=3`` coupling layers with alternating checkered masks,
            ``hidden_features=(64, 64)``, ReLU.

    Example:
        >>> import pyro.distributions as dist
        >>> def model():
        ...     pyro.sample("x", dist.Normal(0.0, 1.0).expand([3]).to_event(1))
        >>> guide = AutoZukoRealNVP(model)
        >>> guide()["x"].shape
        torch.Size([3])
    """

    def __init__(
        self, model: Callable, *, init_loc_fn: Callable = init_to_feasible, **flow_options
    ) -> None:
        self._zuko = import_zuko()
        self._flow_options = flow_options
        super().__init__(model, init_loc_fn=init_loc_fn)

    def _setup_prototype(self, *args, **kwargs) -> None:
        super()._setup_prototype(*args, **kwargs)
        like = self._init_loc()  # the latents' device and dtype
        flow = self._zuko.flows.RealNVP(features=self.latent_dim, **self._flow_options)
        self.flow = flow.to(device=like.device, dtype=like.dtype)
        # A param store loaded from disk (or left by an earlier guide of this name)
        # already holds the weights: use them, so the module and the optimizer agree.
        pyro.module(self._pyro_get_fullname("flow"), self.flow, update_module_params=True)

    def get_posterior(self, *args, **kwargs) -> Distribution:
        from pyro.contrib.zuko import ZukoToPyro

        return ZukoToPyro(self.flow())

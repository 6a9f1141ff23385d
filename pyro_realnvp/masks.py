"""The old path of :mod:`pyro_realnvp.flows.masks` and :mod:`pyro_realnvp.flows.coupling`: an
alias that warns, until the next release."""

from ._internal.moved import alias

__getattr__, __all__ = alias(__name__, "flows.masks", "flows.coupling")

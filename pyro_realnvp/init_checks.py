"""The old path of :mod:`pyro_realnvp.guide.initial`, :mod:`pyro_realnvp.guide.sites` and
:mod:`pyro_realnvp._internal.locate`: an alias that warns, until the next release."""

from ._internal.moved import alias

__getattr__, __all__ = alias(__name__, "guide.initial", "guide.sites", "_internal.locate")

"""The old path of :mod:`pyro_realnvp.infer.flat`: an alias that warns, until the next release."""

from ._internal.moved import alias

__getattr__, __all__ = alias(__name__, "infer.flat")

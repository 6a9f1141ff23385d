"""The old path of :mod:`pyro_realnvp.distributed.ddp` and
:mod:`pyro_realnvp.distributed.agreement`: an alias that warns, until the next release."""

from ._internal.moved import alias

__getattr__, __all__ = alias(__name__, "distributed.ddp", "distributed.agreement")

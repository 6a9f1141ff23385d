"""The optimizer's flat buffer: :class:`~pyro_realnvp._internal.flat.FlatParameters`, which
the guide also uses to declare its flow to Pyro as one parameter, so it lives beneath both."""

from .._internal.flat import FlatParameters, unpacked

__all__ = ["FlatParameters", "unpacked"]

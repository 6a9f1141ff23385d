"""(being written)"""

from __future__ import annotations

from .common import Spec

__all__ = ["SPECS"]

SPECS: dict[str, Spec] = {}

"""Optional libraries imported without the noise their import makes."""

from __future__ import annotations

import logging
import warnings
from types import ModuleType

__all__ = ["import_arviz"]


def import_arviz() -> ModuleType:
    """ArviZ, imported quietly: its import logs which of its preview packages are missing
    (at INFO, three lines where a script configures logging) and warns once a day of a
    coming refactor; neither is news to a user of this package.

    Example:
        >>> import_arviz().__name__
        'arviz'
    """
    logger = logging.getLogger("arviz.preview")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", r"\s*ArviZ is undergoing", FutureWarning)
            import arviz
    finally:
        logger.setLevel(level)
    return arviz

"""Aliases of the module paths that moved when the package was split into sub-packages."""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable

__all__ = ["alias"]


def alias(old: str, *new: str) -> tuple[Callable[[str], object], list[str]]:
    """Warn that module ``old`` moved to ``new`` (paths under ``pyro_realnvp``), and return
    the ``__getattr__`` and ``__all__`` that make ``old`` an alias of them.

    Called from the body of the module left at the old path; ``stacklevel`` 3 points past
    it to the code that imported it (Python skips its own import machinery's frames). A
    name is looked up in the new modules in order, so the old module's names, private
    ones too, still resolve.

    Example:
        >>> import warnings
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     getattr_, names = alias("pyro_realnvp.flow", "flows.realnvp")
        >>> str(caught[0].message)[:53], getattr_("realnvp").__name__
        ('pyro_realnvp.flow moved to pyro_realnvp.flows.realnvp', 'realnvp')
    """
    paths = [f"pyro_realnvp.{name}" for name in new]
    warnings.warn(
        f"{old} moved to {' and '.join(paths)}; the old path works until the next release",
        DeprecationWarning,
        stacklevel=3,
    )
    modules = [importlib.import_module(path) for path in paths]

    def __getattr__(name: str) -> object:
        for module in modules:
            if hasattr(module, name):
                return getattr(module, name)
        raise AttributeError(f"module {old!r} has no attribute {name!r}")

    return __getattr__, sorted({name for module in modules for name in module.__all__})

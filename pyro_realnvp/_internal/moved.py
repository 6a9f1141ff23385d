"""Aliases of the module paths that moved when the package was split into sub-packages."""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable
from types import ModuleType

__all__ = ["alias", "moved_module"]


def _warn(old: str, paths: list[str], stacklevel: int) -> None:
    warnings.warn(
        f"{old} moved to {' and '.join(paths)}; the old path works until the next release",
        DeprecationWarning,
        stacklevel=stacklevel + 1,
    )


def alias(old: str, *new: str) -> tuple[Callable[[str], object], list[str]]:
    """Warn that module ``old`` moved to ``new`` (paths under ``pyro_realnvp``), and return
    the ``__getattr__`` and ``__all__`` that make ``old`` an alias of them.

    Called from the body of the module left at the old path: the warning points past it
    to the ``import`` statement (Python skips its own import machinery's frames). A name
    is looked up in the new modules in order, so every name the old module exported, and
    its private names that kept their names, still resolve.

    Example:
        >>> import warnings
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     getattr_, names = alias("pyro_realnvp.flow", "flows.realnvp")
        >>> str(caught[0].message)[:53], getattr_("realnvp").__name__
        ('pyro_realnvp.flow moved to pyro_realnvp.flows.realnvp', 'realnvp')
    """
    paths = [f"pyro_realnvp.{name}" for name in new]
    _warn(old, paths, stacklevel=3)
    modules = [importlib.import_module(path) for path in paths]

    def __getattr__(name: str) -> object:
        for module in modules:
            if hasattr(module, name):
                return getattr(module, name)
        raise AttributeError(f"module {old!r} has no attribute {name!r}")

    return __getattr__, sorted({name for module in modules for name in module.__all__})


def moved_module(old: str, new: str) -> ModuleType:
    """The alias module left at ``old``, read as an attribute of the package: its own
    warning silenced, one raised instead at the line that read the attribute (an
    ``importlib`` frame would stand there otherwise, and hide it from the default filter).

    Example:
        >>> import warnings
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     module = moved_module("pyro_realnvp.flow", "flows.realnvp")
        >>> len(caught), module.RealNVP.__name__
        (1, 'RealNVP')
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        module = importlib.import_module(old)
    _warn(old, [f"pyro_realnvp.{new}"], stacklevel=3)
    return module

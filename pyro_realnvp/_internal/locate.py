"""Where in the user's model an error was raised: the source line, the site, the sites before.

A distribution whose arguments are invalid raises in its constructor, before
``pyro.sample`` (which would know the site's name) is reached, so Pyro's message names
no site. The traceback still holds the user's frame; its source names the site when
the statement is a ``pyro.sample("y", ...)`` or ``pyro.factor("y", ...)`` call. The
model's trace up to the failure (:func:`partial_trace`) says which sites it reached.
"""

from __future__ import annotations

import ast
import inspect
import os
import sys
import sysconfig
import textwrap
import warnings
from collections.abc import Callable
from types import FrameType

import pyro
import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample

__all__ = ["first_line", "model_raised", "partial_trace", "raised_at", "warn_at_user"]

_LIBRARIES = tuple(
    os.path.realpath(path) + os.sep
    for path in (
        os.path.dirname(torch.__file__),
        os.path.dirname(pyro.__file__),
        os.path.dirname(os.path.dirname(__file__)),  # this package
        sysconfig.get_paths()["stdlib"],
    )
)
_SITE_STATEMENTS = ("sample", "factor")
_MAX_SOURCE = 120


def raised_at(error: BaseException) -> str:
    """``" at site 'y' (model.py:12 in model: `pyro.sample("y", ...)`)"``, or ``""``.

    The innermost frame outside torch, Pyro, this package and the standard library is
    the user's: called only on errors caught inside this package, that frame is the
    model (or a function it calls), never the script that called :func:`fit`.

    Example:
        >>> import pyro.distributions as dist
        >>> def model():
        ...     pyro.sample("y", dist.Normal(torch.tensor(float("nan")), 1.0))
        >>> try:
        ...     model()
        ... except ValueError as error:
        ...     raised_at(error).split(" (")[0]
        " at site 'y'"
    """
    frame, lineno = _user_frame(error)
    if frame is None:
        return ""
    site, source = _site_statement(frame, lineno)
    code = frame.f_code
    place = f"{os.path.basename(code.co_filename)}:{lineno} in {code.co_name}"
    if source:
        place += f": `{source}`"
    return f" at site '{site}' ({place})" if site else f" ({place})"


def _is_library(filename: str) -> bool:
    filename = os.path.realpath(filename)
    return (
        filename.startswith(_LIBRARIES)
        or os.sep + "site-packages" + os.sep in filename
        or filename.startswith("<frozen")
    )


def warn_at_user(message: str, category: type[Warning] = UserWarning) -> None:
    """Warn, attributing the warning to the innermost frame outside torch, Pyro, this
    package and the standard library: the user's line that led here, whatever the depth.

    Example:
        >>> import warnings
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     warn_at_user("look here")
        >>> caught[0].filename.startswith("<doctest")
        True
    """
    frame, level = sys._getframe(1), 2
    while frame is not None and _is_library(frame.f_code.co_filename):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level if frame is not None else 2)


def _user_frame(error: BaseException) -> tuple[FrameType | None, int]:
    """The innermost traceback frame not in a library, and its line."""
    found: tuple[FrameType | None, int] = (None, 0)
    tb = error.__traceback__
    while tb is not None:
        if not _is_library(tb.tb_frame.f_code.co_filename):
            found = (tb.tb_frame, tb.tb_lineno)
        tb = tb.tb_next
    return found


def _site_statement(frame: FrameType, lineno: int) -> tuple[str | None, str]:
    """The site named by the ``pyro.sample``/``pyro.factor`` call spanning ``lineno``
    (``None`` if no such call names it by a literal), and that call's source, or the
    line's where there is none."""
    try:
        lines, start = inspect.getsourcelines(frame.f_code)
        text = textwrap.dedent("".join(lines))
        tree = ast.parse(text)
    except (OSError, TypeError, SyntaxError, IndentationError):
        return None, ""
    start = max(start, 1)  # 0 for a module's own code
    line = lineno - start + 1
    calls = [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and node.lineno <= line <= (node.end_lineno or 0)
        and _statement_name(node.func) in _SITE_STATEMENTS
        and node.args and isinstance(node.args[0], ast.Constant)
        and isinstance(node.args[0].value, str)
    ]  # fmt: skip
    if not calls:
        source = text.splitlines()[line - 1] if 0 < line <= len(text.splitlines()) else ""
        return None, _shorten(source)
    call = min(calls, key=lambda node: (node.end_lineno or 0) - node.lineno)
    return call.args[0].value, _shorten(ast.get_source_segment(text, call) or "")


def _statement_name(func: ast.expr) -> str:
    """``sample`` for ``pyro.sample`` or ``sample``; ``""`` for other callees."""
    if isinstance(func, ast.Attribute):
        return func.attr
    return func.id if isinstance(func, ast.Name) else ""


def _shorten(source: str) -> str:
    """One line of source with its whitespace collapsed, cut at ``_MAX_SOURCE``."""
    source = " ".join(source.split())
    return source if len(source) <= _MAX_SOURCE else source[: _MAX_SOURCE - 3] + "..."


def first_line(error: BaseException) -> str:
    """An error's first line without a trailing colon: Pyro appends the offending values
    and a table of trace shapes on the lines after it, too long for a one-line reason.

    Example:
        >>> first_line(ValueError("Expected parameter loc:\\nTrace Shapes: ..."))
        'Expected parameter loc'
    """
    lines = [line for line in str(error).splitlines() if line.strip()]
    return lines[0].rstrip(":") if lines else type(error).__name__


def partial_trace(model: Callable, args: tuple = (), kwargs: dict | None = None):
    """The model's trace up to where it fails (all of it if it does not).

    Example:
        >>> import pyro.distributions as dist
        >>> def model():
        ...     x = pyro.sample("x", dist.Normal(0.0, 1.0))
        ...     pyro.sample("y", dist.Normal(0.0, -1.0))  # raises
        >>> [name for name, site in partial_trace(model).nodes.items() if site["type"] == "sample"]
        ['x']
    """
    tracer = poutine.trace(model)
    try:
        with torch.no_grad(), poutine.block():
            tracer.get_trace(*args, **(kwargs or {}))
    except (ValueError, RuntimeError, TypeError, NotImplementedError):
        pass  # the sites before the failure are what is wanted
    return tracer.msngr.trace


def model_raised(error: BaseException, partial: poutine.Trace) -> str:
    """Say where the model raised, as in ``the model raised at site 'y' (model.py:12 in
    model: `...`), after site 'x' (the last sample site it reached)``: the statement that
    raised, read from the traceback, and the last site of ``partial``, the model's trace
    up to the failure (:func:`partial_trace`).

    Example:
        >>> import pyro.distributions as dist
        >>> def model():
        ...     pyro.sample("x", dist.Normal(0.0, 1.0))
        ...     raise ValueError("broken")
        >>> try:
        ...     model()
        ... except ValueError as error:
        ...     model_raised(error, partial_trace(model)).split(" (")[0]
        'the model raised'
    """
    sites = [
        name
        for name, site in partial.nodes.items()
        if site["type"] == "sample" and not site_is_subsample(site)  # not a plate's indices
    ]
    parts = [raised_at(error).strip()]
    if sites:
        parts.append(f"after site '{sites[-1]}' (the last sample site it reached)")
    return " ".join(["the model raised", ", ".join(part for part in parts if part)]).strip()

"""Griffe extension: render this package's Sphinx-flavoured docstrings in MkDocs.

- ``Example:`` sections are read as ``Examples:``: Griffe's Google parser knows only the
  plural and would render the doctests under the singular as Markdown text, not code.
- ``:math:`...``` becomes ``$...$`` for MathJax, and ``:class:`~a.B``` (``:func:``,
  ``:meth:``, ...) becomes ``B`` in code font.
"""

from __future__ import annotations

import re

from griffe import Extension, Object

_SINGULAR = re.compile(r"^(\s*)Example:\s*$", flags=re.MULTILINE)
_MATH = re.compile(r":math:`([^`]+)`")
_ROLE = re.compile(r":(?:class|func|meth|mod|attr|obj):`~?(?:[\w.]+\.)?(\w+)`")


class ExampleSections(Extension):
    def on_object(self, *, obj: Object, **kwargs) -> None:
        if obj.docstring is None:
            return
        text = _SINGULAR.sub(r"\1Examples:", obj.docstring.value)
        text = _MATH.sub(lambda m: f"${m.group(1)}$", text)
        obj.docstring.value = _ROLE.sub(r"`\1`", text)

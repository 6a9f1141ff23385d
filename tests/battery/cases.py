"""A battery file's table rows, each a ``pytest.param`` with its id."""

from __future__ import annotations

import pytest


class Cases:
    """``case(*values, id=...)``: one row of a table; a strict xfail where ``gaps`` names
    its id (a gap found later: ``"BAD: ..."`` or ``"WEAK: ..."`` and what happens now), so
    its fix shows up as an XPASS. ``case.check()``, at the file's end, refuses a gap that
    names no case.

    Example:
        >>> case = Cases({"b": "BAD: raises a bare KeyError"})
        >>> [len(case(1, id=name).marks) for name in ("a", "b")]
        [0, 1]
    """

    def __init__(self, gaps: dict[str, str]) -> None:
        self.gaps, self.used = gaps, set()

    def __call__(self, *values, id: str):  # noqa: A002 - pytest.param's own name
        assert id not in self.used, f"duplicate case id {id}"
        self.used.add(id)
        reason = self.gaps.get(id)
        marks = () if reason is None else pytest.mark.xfail(strict=True, reason=reason)
        return pytest.param(*values, id=id, marks=marks)

    def check(self) -> None:
        assert set(self.gaps) <= self.used, (
            f"GAPS names no case: {sorted(set(self.gaps) - self.used)}"
        )

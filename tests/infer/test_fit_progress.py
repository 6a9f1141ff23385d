"""fit's progress bar: shown with the loss on a terminal, silent otherwise or when off."""

import io
import sys

import pyro
import pyro.distributions as dist
import pytest
from pyro.infer.autoguide import AutoNormal

from pyro_realnvp import fit


class Terminal(io.StringIO):
    def isatty(self):
        return True


def model():
    pyro.sample("x", dist.Normal(0.0, 1.0))


@pytest.mark.parametrize(
    ("progress", "stream", "shown"),
    [(True, Terminal, True), (True, io.StringIO, False), (False, Terminal, False)],
    ids=["on-terminal", "on-pipe", "off-terminal"],
)
def test_progress_bar_shows_the_loss_only_on_a_terminal_when_asked(
    monkeypatch, progress, stream, shown
):
    monkeypatch.setattr(sys, "stderr", stream())
    losses = fit(model, AutoNormal(model), num_steps=20, progress=progress)
    output = sys.stderr.getvalue()
    assert ("loss=" in output) == shown
    if shown:
        assert f"loss={losses[-1]:.4g}" in output
        assert "20/20" in output

"""The figures are written, show what they should, and matplotlib stays optional."""

import subprocess
import sys

import matplotlib
import numpy as np
import pytest
import torch

from pyro_realnvp import plot_loss, plot_pair

matplotlib.use("Agg")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    import matplotlib.pyplot as plt

    plt.close("all")


def draws(num_draws, scale=1.0):
    return {"mu": torch.randn(num_draws) * scale, "theta": torch.randn(num_draws, 2) * scale}


def is_png(path):
    data = path.read_bytes()
    return len(data) > 1000 and data.startswith(PNG_SIGNATURE)


@pytest.mark.parametrize(
    "draw",
    [
        lambda path: plot_loss(np.linspace(10.0, 1.0, 200), path=path),
        lambda path: plot_pair(draws(300), draws(500, 2.0), path=path),
        lambda path: plot_pair(draws(300), path=path),
    ],
    ids=["loss", "pair-with-reference", "pair-alone"],
)
def test_figure_is_saved_as_png(tmp_path, draw):
    path = tmp_path / "figures" / "figure.png"
    draw(path)
    assert is_png(path)


def test_loss_curve_draws_each_step_and_its_running_median():
    losses = np.r_[np.full(50, 5.0), np.full(50, 1.0)]
    ax = plot_loss(losses, window=5)
    raw, running = ax.get_lines()
    assert np.array_equal(raw.get_ydata(), losses)
    assert running.get_ydata()[0] == 5.0
    assert running.get_ydata()[-1] == 1.0


@pytest.mark.parametrize("losses", [[], [[1.0, 2.0]]], ids=["empty", "two-dimensional"])
def test_loss_curve_rejects_bad_losses(losses):
    with pytest.raises(ValueError, match="losses"):
        plot_loss(losses)


def test_pair_plot_has_a_row_per_scalar_and_both_sets():
    axes = plot_pair(draws(300), draws(500, 2.0), max_points=100)
    assert axes.shape == (3, 3)
    scatter = axes[1, 0].collections
    assert [len(points.get_offsets()) for points in scatter] == [100, 100]


def test_pair_plot_takes_inference_data_and_var_names():
    import arviz as az

    idata = az.from_dict(
        posterior={name: value[None].numpy() for name, value in draws(50).items()}
    )
    axes = plot_pair(idata, draws(50), var_names=["theta"])
    assert axes.shape == (2, 2)


def test_missing_matplotlib_is_a_clear_error_and_the_package_imports(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    with pytest.raises(ImportError, match=r"pyro-realnvp\[plot\]"):
        plot_loss([1.0, 2.0])
    code = "import sys, pyro_realnvp; sys.exit('matplotlib' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0

"""Figures a fit is checked with: the loss curve, and guide draws against reference draws.

matplotlib (the ``plot`` extra) is imported on the first call, so the package imports
without it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ._internal.quiet import import_arviz

if TYPE_CHECKING:
    from arviz import InferenceData
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["plot_loss", "plot_pair"]

Draws = Mapping[str, Any]


def _pyplot():
    try:
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise ImportError("plots need matplotlib: pip install 'pyro-realnvp[plot]'") from error
    return plt


def _save(figure: Figure, path: str | Path | None) -> None:
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, dpi=120, bbox_inches="tight")


def plot_loss(
    losses: Sequence[float],
    *,
    ax: Axes | None = None,
    window: int | None = None,
    label: str | None = None,
    path: str | Path | None = None,
) -> Axes:
    r"""Plot the loss history of :func:`~pyro_realnvp.fit` (:math:`-\mathrm{ELBO}` per step).

    The raw losses are drawn faintly with their running median over ``window`` steps on
    top, on a symmetric-log axis so early and late steps both show.

    Args:
        losses: One loss per step.
        ax: Axes to draw on; a new figure if ``None``.
        window: Running-median width; ``len(losses) // 50`` (at least 1) if ``None``.
        label: Legend label of the curve.
        path: Save the figure there (format from the suffix, e.g. ``.png``) if given.

    Example:
        >>> ax = plot_loss([3.0, 2.0, 1.5, 1.4, 1.41], label="AutoRealNVP")
        >>> ax.get_xlabel()
        'SVI step'
    """
    values = np.asarray(losses, dtype=float)
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"losses must be a non-empty 1-D sequence, got shape {values.shape}")
    window = max(1, values.size // 50) if window is None else window
    if window < 1:
        raise ValueError(f"window must be at least 1, got {window}")
    plt = _pyplot()
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.5))
    steps = np.arange(1, values.size + 1)
    (line,) = ax.plot(steps, values, alpha=0.3, linewidth=0.8)
    padded = np.pad(values, (window // 2, window - 1 - window // 2), mode="edge")
    running = np.median(np.lib.stride_tricks.sliding_window_view(padded, window), axis=-1)
    ax.plot(steps, running, color=line.get_color(), label=label)
    ax.set_yscale("symlog")
    ax.set_xlabel("SVI step")
    ax.set_ylabel("loss (-ELBO)")
    if label is not None:
        ax.legend()
    _save(ax.figure, path)
    return ax


def _as_inference_data(draws: Draws | InferenceData) -> InferenceData:
    """Draws as one chain: a dict of ``(num_draws, ...)`` arrays, or an ``InferenceData``."""
    az = import_arviz()

    if isinstance(draws, az.InferenceData):
        return draws
    arrays = {}
    for name, value in draws.items():
        if isinstance(value, torch.Tensor):
            value = value.detach().cpu().numpy()
        arrays[name] = np.asarray(value)[None]
    return az.from_dict(posterior=arrays)


def plot_pair(
    draws: Draws | InferenceData,
    reference: Draws | InferenceData | None = None,
    *,
    var_names: Sequence[str] | None = None,
    labels: tuple[str, str] = ("guide", "reference"),
    max_points: int = 1000,
    path: str | Path | None = None,
) -> np.ndarray:
    """Pair plot of guide draws, overlaid on reference draws (NUTS, exact) when given.

    Built on ``arviz.plot_pair`` with marginals; the reference is drawn first, in grey,
    under the guide's draws. Each set is thinned to ``max_points`` draws.

    Args:
        draws: Guide draws: ``{site: array of shape (num_draws, ...)}`` (tensors too), or
            an ``InferenceData`` such as :func:`~pyro_realnvp.to_inference_data` returns.
        reference: Reference draws in the same form, or ``None``.
        var_names: Variables to plot; all of ``draws`` if ``None``.
        labels: Legend labels of ``draws`` and ``reference``.
        max_points: Most draws of each set to scatter.
        path: Save the figure there if given.

    Returns:
        The grid of matplotlib axes.

    Example:
        >>> q = {"x": torch.randn(200), "y": torch.randn(200)}
        >>> axes = plot_pair(q, {"x": torch.randn(300), "y": torch.randn(300)})
        >>> axes.shape
        (2, 2)
    """
    az = import_arviz()

    plt = _pyplot()
    sets = [
        (data, label, color)
        for data, label, color in [(reference, labels[1], "0.6"), (draws, labels[0], "C0")]
        if data is not None
    ]
    axes = None
    for data, _, color in sets:
        idata = _as_inference_data(data)
        step = max(1, idata.posterior.sizes["draw"] // max_points)
        axes = az.plot_pair(
            idata.posterior.isel(draw=slice(None, None, step)),
            var_names=None if var_names is None else list(var_names),
            marginals=True,
            ax=axes,
            scatter_kwargs={"color": color, "alpha": 0.4, "s": 8},
            marginal_kwargs={"color": color},
        )
    axes = np.atleast_2d(axes)
    figure = axes.flat[0].figure
    handles = [plt.Line2D([], [], color=color, marker="o", ls="") for *_, color in sets]
    figure.legend(handles, [label for _, label, _ in sets], loc="upper right")
    _save(figure, path)
    return axes

"""Draws of a packed-latent guide scored by ``torch.func.vmap`` over the model's potential.

Where Pyro cannot broadcast a model over a plate of draws (a distribution without
``expand``, a ``PyroModule`` layer that takes one weight matrix, indexing that mixes
dimensions), the model can still score one draw; ``torch.func.vmap`` batches that
one-draw computation in torch itself, at close to a vectorized pass's speed. The guide's
packed latent is drawn in one batch, and :class:`~pyro_realnvp.guide.potential.Potential`
scores each draw on the full data. Two draws are checked against scoring them alone
(validation on); the posterior predictive, which samples, is drawn one draw at a time.
"""

from __future__ import annotations

from collections.abc import Callable

import pyro
import torch
from pyro import poutine
from torch import Tensor
from torch.distributions import biject_to
from tqdm.auto import tqdm

from .._internal.compat import count_elements, full_data_plates, unpack_latent
from ..guide.potential import Potential
from .scored import (
    CHUNK_ELEMENTS,
    PROGRESS_DELAY,
    ImportanceDraws,
    _Vectorization,
    is_data_site,
    is_factor_site,
    sample_sites,
)

__all__ = ["vmapped_draws"]


def vmapped_draws(model: Callable, guide, args: tuple, kwargs: dict, num_samples: int,
                  predictive: bool, one, caller: str) -> ImportanceDraws:  # fmt: skip
    """``num_samples`` draws of an ``AutoContinuous`` ``guide``, each scored by ``model``
    through ``torch.func.vmap`` (see the module docstring); raises
    ``draws._Vectorization`` where the model cannot be batched so.

    Example:
        >>> import pyro.distributions as dist
        >>> from pyro_realnvp import AutoRealNVP
        >>> from pyro_realnvp.diagnostics import importance_draws
        >>> model = lambda: pyro.sample("c", dist.LKJ(3, 2.0))  # LKJ has no expand()
        >>> importance_draws(model, AutoRealNVP(model, num_layers=2), num_samples=8).method
        'vmap'
    """
    potential = Potential(model, guide, args, kwargs, full_data=True)
    data = [name for name, site in sample_sites(one[1]).items() if is_data_site(site)]
    latents = [name for name, site in sample_sites(one[1]).items()
               if name not in data and not is_factor_site(site)]  # fmt: skip
    posterior = guide.get_posterior(*args, **kwargs)
    u = posterior.rsample((num_samples,))
    log_q = posterior.log_prob(u).reshape(num_samples)

    def scored(point: Tensor) -> tuple[Tensor, dict, dict, dict]:
        trace, log_det = potential.trace(point)
        nodes = trace.nodes
        sums = {name: nodes[name]["log_prob_sum"] for name in sample_sites(trace)}
        latent = {name: nodes[name]["value"] for name in latents}
        log_likelihood = {name: nodes[name]["fn"].log_prob(nodes[name]["value"]) for name in data}
        return trace.log_prob_sum() + log_det, latent, log_likelihood, sums

    try:
        batched = _batched(scored, u)
    except Exception as error:  # noqa: BLE001 - any failure of vmap: score draw by draw
        raise _Vectorization(error) from error
    _check_two_draws(scored, u, batched[0])
    log_joint, latent, log_likelihood, sums = batched
    non_finite = {
        f"model site '{name}'": int((~torch.isfinite(s)).sum()) for name, s in sums.items()
    }
    non_finite["guide"] = int((~torch.isfinite(log_q)).sum())
    drawn = _predict(model, guide, u, args, kwargs, caller) if predictive else {}
    observed = {name: one[1].nodes[name]["value"].detach() for name in data}
    return ImportanceDraws(
        (log_joint - log_q).detach(), latent, log_likelihood, drawn, observed,
        sample_sites(one[1]), "vmap", "", {k: v for k, v in non_finite.items() if v},
    )  # fmt: skip


def _batched(scored: Callable, u: Tensor):
    """``scored`` at every row of ``u`` by ``torch.func.vmap``, in chunks sized by its work
    per draw, validation off (its checks read values, which vmap cannot batch)."""
    with pyro.validation_enabled(False):
        per_draw = max(count_elements(scored, u[0]), 1)
        size = max(1, int(CHUNK_ELEMENTS // per_draw))
        chunks = [
            torch.func.vmap(scored)(u[start : start + size]) for start in range(0, len(u), size)
        ]
    if len(chunks) == 1:
        return chunks[0]
    return torch.utils._pytree.tree_map(lambda *parts: torch.cat(parts), *chunks)


def _check_two_draws(scored: Callable, u: Tensor, log_joint: Tensor) -> None:
    """Refuse the batched scores unless two of them are those of the draws alone."""
    for index in range(min(2, len(u))):
        alone = scored(u[index])[0]
        if not torch.allclose(alone.double(), log_joint[index].double(), rtol=1e-4, atol=1e-3,
                              equal_nan=True):  # fmt: skip
            raise _Vectorization(
                ValueError(
                    f"draw {index} scores {float(log_joint[index]):.6g} batched by vmap "
                    f"and {float(alone):.6g} alone"
                )  # fmt: skip
            )


def _predict(model, guide, u: Tensor, args, kwargs, caller: str) -> dict[str, Tensor]:
    """Each observed site drawn at each latent draw, one draw at a time (sampling cannot
    be batched by vmap): the model with its latents held there and its data released."""
    rows = []
    bar = tqdm(u, desc=f"{caller}: predictive draws", disable=None, delay=PROGRESS_DELAY,
               leave=False)  # fmt: skip
    for point in bar:
        values = {
            site["name"]: biject_to(site["fn"].support)(v)
            for site, v in unpack_latent(guide, point)
        }
        released = poutine.condition(poutine.uncondition(model), data=values)
        with poutine.block(), full_data_plates():
            trace = poutine.trace(released).get_trace(*args, **kwargs)
        rows.append({
            name: site["value"].detach() for name, site in trace.nodes.items()
            if site["type"] == "sample" and site["infer"].get("obs") is not None
        })  # fmt: skip
    return {name: torch.stack([row[name] for row in rows]) for name in rows[0]}

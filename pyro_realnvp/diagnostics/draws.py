r"""A guide's draws scored by the model: importance log-weights, values, likelihoods.

:math:`\log w_s = \log p(x, z_s) - \log q(z_s)`, :math:`z_s \sim q`, on the full data:
subsampling plates are switched off (as for the
:class:`~pyro_realnvp.guide.potential.Potential` of the Laplace start), so a minibatch
never stands in for the model. The draws are scored in one vectorized pass where Pyro can
broadcast the model over them (``pyro.infer.importance``), which is checked on two draws
against scoring them one by one; where it cannot (a distribution without ``expand``, a
``PyroModule`` layer that takes one weight matrix, arithmetic that mixes the draws) they
are scored one by one, with a progress bar when that takes more than a few seconds.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable

import pyro
import torch
from pyro import poutine
from pyro.infer.autoguide import AutoContinuous, AutoGuideList
from pyro.infer.importance import vectorized_importance_weights
from torch import Tensor
from tqdm.auto import tqdm

from .._internal import plates
from .._internal.checks import check_int
from .._internal.compat import count_elements, full_data_plates
from ..guide.potential import sites_not_finite, subsampled_sites
from .scored import (
    CHUNK_ELEMENTS,
    PROGRESS_DELAY,
    ImportanceDraws,
    _first_lines,
    _Vectorization,
    is_data_site,
    is_factor_site,
    sample_sites,
    unguided_sites,
)
from .vmapped import vmapped_draws

__all__ = ["METHODS", "ImportanceDraws", "importance_draws"]

_log = logging.getLogger(__package__)
#: Name of the plate that vectorizes the draws, as in ``pyro.infer.importance``.
DRAWS_PLATE = "num_particles_vectorized"
#: What a model that cannot be vectorized over draws raises (or a draw it cannot score).
_FAILURES = (RuntimeError, ValueError, TypeError, IndexError, NotImplementedError)


#: The ways to score draws, fastest first: ``importance_draws(method=None)`` takes the
#: first that the model and the guide allow.
METHODS = ("vectorized", "vmap", "draw by draw")


@torch.no_grad()
def importance_draws(
    model: Callable,
    guide: Callable,
    *args,
    num_samples: int = 1000,
    max_plate_nesting: int | None = None,
    predictive: bool = False,
    method: str | None = None,
    caller: str = "importance_draws",
    **kwargs,
) -> ImportanceDraws:
    r"""Draws of ``guide`` scored by ``model`` on the full data (see the module docstring).

    ``method``: ``"vectorized"``, Pyro's draws plate; ``"vmap"``, ``torch.func.vmap``
    over the one-draw computation, for a guide over a packed latent (``AutoContinuous``,
    such as AutoRealNVP); ``"draw by draw"``; or ``None``, the first of these the model
    allows, each checked on two draws against scoring them alone. ``predictive`` also
    draws each observed site at each draw. A guide that packs a latent at a minibatch's
    size, or a plate given explicit ``subsample`` indices, is refused, naming the site.

    Example:
        >>> import pyro.distributions as dist
        >>> from pyro.infer.autoguide import AutoNormal
        >>> model = lambda: pyro.sample("x", dist.LKJ(3, 2.0))  # LKJ has no expand()
        >>> importance_draws(model, AutoNormal(model), num_samples=4).method
        'draw by draw'
    """
    check_pair(model, guide)
    num_samples = check_int("num_samples", num_samples, 1)
    max_plate_nesting = check_nesting(max_plate_nesting)
    if method is not None and method not in METHODS:
        raise ValueError(f"method must be None or one of {METHODS}, got {method!r}")
    ensure_setup(guide, args, kwargs)
    refuse_packed_subsample(guide, caller)
    scorer = _Scorer(model, guide, args, kwargs, predictive, caller)
    with full_data_plates():
        one = scorer.one_draw()
        nesting = plate_nesting(one[1], max_plate_nesting)
        draws, note = _batched(scorer, num_samples, nesting, one, method, max_plate_nesting)
        if draws is None:
            _log.info("%s scores draws one by one: %s", caller, note)
            draws = scorer.draw_by_draw(num_samples, one, note)
    draws.unguided = unguided_sites(*one)
    return draws


def _batched(
    scorer, num_samples, nesting, one, method, given
) -> tuple[ImportanceDraws | None, str]:
    """The draws scored by the first batched method that works (``method``: that one
    alone), or ``None`` and why none did."""
    notes = []
    if method in (None, "vectorized"):
        try:
            return scorer.vectorized(num_samples, nesting, one, strict=method is not None), ""
        except _Vectorization as failure:
            if method is not None or given is not None and failure.nesting_too_small:
                raise failure.error from failure.error.__cause__
            notes.append(f"Pyro cannot broadcast the model over draws ({failure})")
    packed = isinstance(scorer.guide, AutoContinuous)
    if method == "vmap" and not packed:
        raise ValueError(
            "method='vmap' needs a guide over a packed latent (an AutoContinuous, such as "
            f"AutoRealNVP), got {type(scorer.guide).__name__}"
        )
    if method in (None, "vmap") and packed:
        try:
            draws = vmapped_draws(scorer.model, scorer.guide, scorer.args, scorer.kwargs,
                                  num_samples, scorer.predictive, one, scorer.caller)  # fmt: skip
            draws.note = "; ".join(notes)
            return draws, ""
        except _Vectorization as failure:
            if method is not None:
                raise failure.error from failure.error.__cause__
            notes.append(f"torch.func.vmap cannot batch it ({failure})")
    return None, "; ".join(notes) or "method='draw by draw'"


def check_pair(model, guide) -> None:
    """Refuse a model or a guide that cannot be called (``guide=None`` would score the
    model's prior draws), naming it."""
    for name, value in (("model", model), ("guide", guide)):
        if not callable(value):
            raise TypeError(
                f"{name} must be a callable Pyro {name} (the model and the guide fitted to "
                f"it), got {value!r}"
            )


def check_nesting(max_plate_nesting) -> int | None:
    """``max_plate_nesting`` if it is ``None`` or an integer >= 0, else an error naming it.

    Example:
        >>> check_nesting(2), check_nesting(None)
        (2, None)
    """
    if max_plate_nesting is None:
        return None
    try:
        return check_int("max_plate_nesting", max_plate_nesting, 0)
    except (TypeError, ValueError) as error:
        message = f"max_plate_nesting must be None or an integer >= 0, got {max_plate_nesting!r}"
        raise type(error)(message) from None


def ensure_setup(guide: Callable, args: tuple, kwargs: dict) -> None:
    """Build an autoguide's parameters outside any vectorizing plate, once."""
    if getattr(guide, "prototype_trace", False) is None:
        with poutine.block():
            guide(*args, **kwargs)


def plate_nesting(trace: poutine.Trace, given: int | None) -> int:
    """``given``, else the deepest vectorized plate of one run of the model."""
    return given if given is not None else plates.plate_nesting(trace)


def refuse_packed_subsample(guide: Callable, caller: str) -> None:
    """An ``AutoContinuous`` guide packs a local latent at its subsample's size: refuse.

    Its latent vector has the minibatch's length, so it cannot be drawn for every row,
    and scoring it on a minibatch is the silent subsample this module never does.
    """
    parts = list(guide) if isinstance(guide, AutoGuideList) else [guide]
    for part in parts:
        if not isinstance(part, AutoContinuous):
            continue
        for name, plate in subsampled_sites(part.prototype_trace):
            raise ValueError(
                f"{caller} scores the guide on the full data, but latent site '{name}' is "
                f"in subsampling plate '{plate.name}' ({plate.size} of {plate.full_size}) "
                f"and {type(part).__name__} packs it at the subsample's size, so it has no "
                "value for the other rows: use a guide that keeps one value per row (e.g. "
                "AutoNormal), or diagnose the model without subsampling"
            )


def _refuse_subsample_left(traces, caller: str) -> None:
    """A plate still subsampled inside ``full_data_plates`` (explicit indices): refuse."""
    for trace in traces:
        for name, plate in subsampled_sites(trace):
            raise ValueError(
                f"{caller} scores the guide on the full data, but site '{name}' is in plate "
                f"'{plate.name}' given explicit indices ({plate.size} of {plate.full_size}), "
                "which cannot be switched off: call the model with all its rows"
            )


class _Scorer:
    """Scores draws of ``guide`` by ``model``: in one vectorized pass, or one by one."""

    def __init__(self, model, guide, args, kwargs, predictive: bool, caller: str) -> None:
        self.model, self.guide, self.args, self.kwargs = model, guide, args, kwargs
        self.predictive, self.caller = predictive, caller

    def score(self, guide: Callable | None = None) -> tuple[poutine.Trace, poutine.Trace]:
        """A draw of ``guide`` (default the guide) and the model replayed at it, with
        their log-densities computed."""
        with poutine.block():
            guide_trace = poutine.trace(guide or self.guide).get_trace(*self.args, **self.kwargs)
            replayed = poutine.replay(self.model, trace=guide_trace)
            model_trace = poutine.trace(replayed).get_trace(*self.args, **self.kwargs)
        guide_trace.compute_log_prob()
        model_trace.compute_log_prob()
        return guide_trace, model_trace

    def one_draw(self) -> tuple[poutine.Trace, poutine.Trace]:
        """One draw's traces: what each site's shape and plates are, for every draw."""
        traces = self.score()
        _refuse_subsample_left(traces[::-1], self.caller)
        return traces

    def _predict(self, guide_trace: poutine.Trace, plate=contextlib.nullcontext):
        with poutine.block(), plate():
            replayed = poutine.replay(poutine.uncondition(self.model), trace=guide_trace)
            return poutine.trace(replayed).get_trace(*self.args, **self.kwargs)

    def vectorized(self, num_samples: int, nesting: int, one, strict: bool) -> ImportanceDraws:
        """All draws, vectorized in chunks sized by the model's work per draw; two draws
        checked first against scoring them alone (unless ``strict``: vectorize anyway)."""
        probe, guide_trace = self._chunk(2, nesting, one)
        if not strict:
            self._check_draws_apart(probe, guide_trace, one[0])
        size = self._chunk_size(nesting, one)
        chunks = [self._chunk(min(size, num_samples - start), nesting, one)[0]
                  for start in range(0, num_samples, size)]  # fmt: skip
        return _concat(chunks)

    def _chunk(self, num_samples: int, nesting: int, one) -> tuple[ImportanceDraws, poutine.Trace]:
        """``num_samples`` draws in one vectorized pass, and the guide's trace of them."""
        try:
            with poutine.block():
                log_weights, model_trace, guide_trace = vectorized_importance_weights(
                    self.model, self.guide, *self.args, num_samples=num_samples,
                    max_plate_nesting=nesting, **self.kwargs,
                )  # fmt: skip
            predictive = None
            if self.predictive:
                plate = lambda: pyro.plate(DRAWS_PLATE, num_samples, dim=-(nesting + 1))  # noqa: E731
                predictive = self._predict(guide_trace, plate)
        except _FAILURES as error:
            raise _nesting_error(error, nesting, plate_nesting(one[1], None)) from error
        _refuse_subsample_left([model_trace, guide_trace], self.caller)
        traces = {"model": model_trace, "guide": guide_trace}
        return _from_vectorized(log_weights, traces, predictive, one, num_samples), guide_trace

    def _chunk_size(self, nesting: int, one) -> int:
        """Draws per pass: as many as keep a pass within ``CHUNK_ELEMENTS`` tensor elements,
        by what four draws cost beyond two (the model's own work per draw)."""
        counts = [count_elements(self._chunk, size, nesting, one) for size in (2, 4)]
        per_draw = max((counts[1] - counts[0]) / 2, 1.0)
        return max(1, int(CHUNK_ELEMENTS // per_draw))

    def _check_draws_apart(self, draws, guide_trace, one_guide_trace) -> None:
        """Refuse the vectorized pass unless its first draws score as they do alone: a
        model that sums over all of a latent's dimensions, say, mixes the draws."""
        for index in range(min(2, len(draws.log_weights))):
            alone = _slice(guide_trace, one_guide_trace, index)
            guide_trace_i, model_trace_i = self.score(poutine.replay(self.guide, trace=alone))
            log_weight = model_trace_i.log_prob_sum() - guide_trace_i.log_prob_sum()
            together = draws.log_weights[index]
            if not torch.allclose(log_weight.double(), together.double(), rtol=1e-4, atol=1e-3,
                                  equal_nan=True):  # fmt: skip
                raise _Vectorization(
                    ValueError(
                        f"draw {index}'s log-weight is {float(together):.6g} beside the others "
                        f"and {float(log_weight):.6g} alone: the model mixes the draws"
                    )
                )

    def draw_by_draw(self, num_samples: int, one, note: str) -> ImportanceDraws:
        """Each draw scored alone; a progress bar where that takes a while."""
        rows = []
        bar = tqdm(range(num_samples), desc=f"{self.caller}: draws one by one", disable=None,
                   delay=PROGRESS_DELAY, leave=False)  # fmt: skip
        for _ in bar:
            guide_trace, model_trace = self.score()
            predictive = self._predict(guide_trace) if self.predictive else None
            rows.append(_row(guide_trace, model_trace, predictive))
        return _stack(rows, one, note)


def _nesting_error(error: Exception, nesting: int, needed: int) -> _Vectorization:
    """Where a ``max_plate_nesting`` below the model's plates made the pass fail, say so:
    Pyro's error (a shape that does not broadcast) says nothing of it."""
    if nesting >= needed:
        return _Vectorization(error)
    named = ValueError(
        f"max_plate_nesting={nesting} is less than the {needed} plate(s) the model nests, "
        f"so its draws could not be vectorized ({_first_lines(error)}): pass max_plate_nesting="
        f"{needed}, or leave it None to have it measured"
    )
    named.__cause__ = error
    return _Vectorization(named, nesting_too_small=True)


def _slice(trace: poutine.Trace, one: poutine.Trace, index: int) -> poutine.Trace:
    """Draw ``index`` of a vectorized guide trace, with one draw's shapes (from ``one``)."""
    alone = poutine.Trace()
    for name, node in one.nodes.items():
        node = dict(node)
        if name in sample_sites(one):
            node["value"] = trace.nodes[name]["value"][index].reshape(node["value"].shape)
        alone.add_node(name, **node)
    return alone


def _from_vectorized(log_weights, traces, predictive, one, num_samples: int) -> ImportanceDraws:
    """The vectorized traces' values per draw, in one draw's shapes (the draws plate
    leaves singleton dimensions left of each site's own)."""
    one_sites = sample_sites(one[1])
    latent, log_likelihood, drawn, observed = {}, {}, {}, {}

    def per_draw(value: Tensor, shape: torch.Size) -> Tensor:
        return value.detach().reshape((num_samples, *shape))

    for name, site in sample_sites(traces["model"]).items():
        alone = one_sites[name]
        if is_factor_site(site):
            continue
        if not is_data_site(site):
            latent[name] = per_draw(site["value"], alone["value"].shape)
            continue
        batch = alone["fn"].batch_shape
        observed[name] = alone["value"].detach()
        log_likelihood[name] = per_draw(site["fn"].log_prob(site["value"]), batch)
        if predictive is not None:
            value = predictive.nodes[name]["value"]
            drawn[name] = per_draw(value, batch + alone["fn"].event_shape)
    counts = _non_finite_counts(traces, num_samples)
    log_weights = log_weights.detach().reshape(num_samples)
    return ImportanceDraws(log_weights, latent, log_likelihood, drawn, observed, one_sites,
                           "vectorized", "", counts)  # fmt: skip


def _non_finite_counts(traces: dict[str, poutine.Trace], num_samples: int) -> dict[str, int]:
    """How many draws each site's log-density is not finite at, by ``"model site 'y'"``."""
    counts = {}
    for side, trace in traces.items():
        for name, site in sample_sites(trace).items():
            log_prob = site["log_prob"]
            if log_prob.dim() and log_prob.shape[0] == num_samples:
                bad = int((~torch.isfinite(log_prob.reshape(num_samples, -1).sum(-1))).sum())
            else:  # the same at every draw
                bad = 0 if bool(torch.isfinite(log_prob).all()) else num_samples
            if bad:
                counts[f"{side} site '{name}'"] = bad
    return counts


def _row(guide_trace: poutine.Trace, model_trace: poutine.Trace, predictive) -> dict:
    """One draw's log-weight, latent values, log-likelihoods, predictions and the sites
    whose log-density is not finite."""
    row = {"latent": {}, "log_likelihood": {}, "predictive": {}}
    row["log_weight"] = model_trace.log_prob_sum() - guide_trace.log_prob_sum()
    row["non_finite"] = [
        f"{side} site '{name}'"
        for side, trace in (("model", model_trace), ("guide", guide_trace))
        for name in sites_not_finite(trace)
    ]
    for name, site in sample_sites(model_trace).items():
        if is_factor_site(site):
            continue
        if not is_data_site(site):
            row["latent"][name] = site["value"].detach()
            continue
        row["log_likelihood"][name] = site["fn"].log_prob(site["value"]).detach()
        if predictive is not None:
            row["predictive"][name] = predictive.nodes[name]["value"].detach()
    return row


def _stack(rows: list[dict], one, note: str) -> ImportanceDraws:
    """The rows of :func:`_row` as one :class:`ImportanceDraws`."""

    def stack(key: str) -> dict[str, Tensor]:
        return {name: torch.stack([row[key][name] for row in rows]) for name in rows[0][key]}

    counts: dict[str, int] = {}
    for site in (site for row in rows for site in row["non_finite"]):
        counts[site] = counts.get(site, 0) + 1
    sites = sample_sites(one[1])
    observed = {name: site["value"].detach() for name, site in sites.items() if is_data_site(site)}
    log_weights = torch.stack([row["log_weight"] for row in rows]).detach()
    groups = (stack("latent"), stack("log_likelihood"), stack("predictive"))
    return ImportanceDraws(log_weights, *groups, observed, sites, "draw by draw", note, counts)


def _concat(chunks: list[ImportanceDraws]) -> ImportanceDraws:
    """Chunks of draws of one model as one :class:`ImportanceDraws`."""
    if len(chunks) == 1:
        return chunks[0]

    def cat(key: str) -> dict[str, Tensor]:
        return {
            name: torch.cat([getattr(c, key)[name] for c in chunks])
            for name in getattr(chunks[0], key)
        }

    counts: dict[str, int] = {}
    for chunk in chunks:
        for site, count in chunk.non_finite.items():
            counts[site] = counts.get(site, 0) + count
    first = chunks[0]
    log_weights = torch.cat([chunk.log_weights for chunk in chunks])
    groups = (cat("latent"), cat("log_likelihood"), cat("predictive"))
    return ImportanceDraws(log_weights, *groups, first.observed, first.sites, first.method,
                           first.note, counts)  # fmt: skip

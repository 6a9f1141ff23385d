"""The Laplace start: the posterior's mode and the curvature there, as a Gaussian.

:math:`q_0 = \\mathcal N(\\hat u, H^{-1})`, :math:`\\hat u = \\arg\\min U`, :math:`H =
\\nabla^2 U(\\hat u)`, with :math:`U` the model's potential in unconstrained space
(:class:`~pyro_realnvp.guide.potential.Potential`). A guide that starts here has its location and
scale where the posterior is, so its flow only has to learn what is not Gaussian. Modes can
mislead (a hierarchical model's density peaks where a scale goes to zero), so
:func:`laplace_start` scores the Laplace Gaussian against a local one at the initial point
by a Monte-Carlo ELBO and keeps the better; for an objective that covers p's tails it
keeps the Laplace Gaussian wherever the mode is proper (``rule="proper"``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from .mode import _FAILURES, _descend, best_mode, deeper_mode, find_mode, restarts_pay

__all__ = [
    "START_RULES",
    "GaussianStart",
    "batched_potential",
    "best_mode",
    "covariance_factor",
    "find_mode",
    "gaussian_elbo",
    "gaussian_log_weights",
    "hessian",
    "kl_estimate",
    "laplace_start",
    "log_evidence",
    "local_start",
]

#: Nats: a Laplace Gaussian whose draws put log Z within this of its ELBO is taken
#: without scoring the local candidate (:func:`laplace_start`; docs/tuning.md, issue 30).
ALREADY_GOOD = 1.0
#: Nats by which the local candidate's importance estimate of log Z may exceed the Laplace
#: one's before ``rule="proper"`` passes the Laplace Gaussian over: its draws then find
#: under e^-5 of the mass the local ones find, a mode where the posterior has none (a
#: funnel's neck: docs/tuning.md, issue 30).
MASS_GAP = 5.0
#: The widest start of any coordinate of the local (non-Laplace) candidate.
MAX_LOCAL_SCALE = 1.0
#: How :func:`laplace_start` chooses: ``"elbo"``, the candidate with the higher ELBO (the
#: choice reverse KL would make); ``"proper"``, the Laplace Gaussian wherever the mode is
#: proper, for an objective that covers p's tails (tail-adaptive weights).
START_RULES = ("elbo", "proper")


@dataclass
class GaussianStart:
    """A Gaussian start ``N(loc, scale_tril @ scale_tril.T)``; ``bad`` marks coordinates
    whose curvature was unusable (their correlations dropped, scale from the diagonal or 1).

    Example:
        >>> start = GaussianStart(torch.zeros(2), 2 * torch.eye(2), torch.zeros(2, dtype=bool),
        ...                       kind="local")
        >>> start.scale
        tensor([2., 2.])
    """

    loc: Tensor
    scale_tril: Tensor
    bad: Tensor
    kind: str
    elbo: float = -math.inf
    #: The start ``rule="elbo"`` would have taken, where ``rule="proper"`` took this one.
    elbo_choice: GaussianStart | None = None

    @property
    def scale(self) -> Tensor:
        """The diagonal of ``scale_tril``: the affine's per-coordinate scale."""
        return self.scale_tril.diagonal()


def batched_potential(potential: Callable, u: Tensor) -> tuple[Callable, int] | None:
    """``(U over a batch of latents, (K, D) -> (K,); the most latents per call)`` where
    ``potential`` is a :class:`~pyro_realnvp.guide.potential.Potential` whose model scores
    many latents at once (:meth:`~pyro_realnvp.guide.potential.Potential.batched`, checked
    at ``u``); ``None`` for any other potential or model.

    The start's curvature and scores then cost a few batched passes instead of ``D`` or
    64 single ones.

    Example:
        >>> import pyro, pyro.distributions as dist
        >>> from pyro_realnvp import AutoRealNVP
        >>> from pyro_realnvp.guide.potential import Potential
        >>> def model():
        ...     pyro.sample("x", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
        >>> guide = AutoRealNVP(model); _ = guide()
        >>> score, most = batched_potential(Potential(model, guide), torch.zeros(2))
        >>> score(torch.zeros(3, 2)).round(decimals=4)  # -log N(0; 0, I), three latents
        tensor([1.8379, 1.8379, 1.8379])
    """
    ask = getattr(potential, "batched", None)
    return None if ask is None else ask(u)


def _batched_rows(batched: Callable, u: Tensor, directions: Tensor) -> Tensor:
    r"""Rows :math:`H v_k` for each direction, one batched double backward pass: the
    gradient of :math:`\sum_k \nabla U(u_k) \cdot v_k` at copies :math:`u_k = u`."""
    copies = u.detach().expand(len(directions), -1).clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(batched(copies).sum(), copies, create_graph=True)
    if not grad.requires_grad:  # a potential linear in u
        return torch.zeros_like(directions)
    (rows,) = torch.autograd.grad((grad * directions).sum(), copies, allow_unused=True)
    return torch.zeros_like(directions) if rows is None else rows


def _hvp(grad: Tensor, u: Tensor, v: Tensor) -> Tensor:
    (row,) = torch.autograd.grad(grad, u, v, retain_graph=True, allow_unused=True)
    return torch.zeros_like(v) if row is None else row


def hessian(
    potential: Callable[[Tensor], Tensor], u: Tensor, *, diagonal: bool = False, chunk: int = 128
) -> Tensor:
    r""":math:`\nabla^2 U(u)`, shape ``(D, D)``, or only its diagonal, shape ``(D,)``.

    Where the model scores many latents at once (:func:`batched_potential`), rows come
    from batched double backward passes over copies of ``u``; otherwise ``D``
    Hessian-vector products, one backward pass each (faster than ``is_grads_batched``'s
    vmap, docs/tuning.md), rows kept ``chunk`` at a time. Non-finite where the model
    cannot be differentiated twice at ``u``.

    Example:
        >>> hessian(lambda u: (u**2).sum() + u[0] * u[1], torch.zeros(2))
        tensor([[2., 1.],
                [1., 2.]])
    """
    dim = u.numel()
    batched = batched_potential(potential, u)
    if batched is not None:
        rows = _hessian_batched(*batched, u, diagonal)
        if rows is not None:
            return rows
    with torch.enable_grad():
        u = u.detach().requires_grad_(True)
        try:
            (grad,) = torch.autograd.grad(potential(u), u, create_graph=True)
        except _FAILURES:
            return u.new_full((dim,) if diagonal else (dim, dim), math.nan)
        if not grad.requires_grad:  # a potential linear in u
            return u.new_zeros((dim,) if diagonal else (dim, dim))
        eye = torch.eye(dim, dtype=u.dtype, device=u.device)
        parts = []
        for start in range(0, dim, chunk):
            rows = torch.stack([_hvp(grad, u, v) for v in eye[start : start + chunk]])
            parts.append(rows.diagonal(offset=start) if diagonal else rows)
    return torch.cat(parts).detach()


def _hessian_batched(batched: Callable, most: int, u: Tensor, diagonal: bool) -> Tensor | None:
    """:func:`hessian` by batched rows, ``most`` at a time; ``None`` if the model failed."""
    eye = torch.eye(u.numel(), dtype=u.dtype, device=u.device)
    parts = []
    with torch.enable_grad():
        try:
            for start in range(0, len(eye), most):
                rows = _batched_rows(batched, u, eye[start : start + most]).detach()
                parts.append(rows.diagonal(offset=start) if diagonal else rows)
        except _FAILURES:
            return None
    return torch.cat(parts)


def _decouple(precision: Tensor, bad: Tensor) -> Tensor:
    """Drop the rows and columns of ``bad`` coordinates, keeping a usable diagonal."""
    diagonal = precision.diagonal()
    keep = torch.isfinite(diagonal) & (diagonal > 0)
    precision = torch.where(bad[:, None] | bad[None, :], 0.0, precision)
    fallback = torch.where(keep, diagonal, 1.0 / MAX_LOCAL_SCALE**2)
    return precision + torch.diag(torch.where(bad, fallback, 0.0))


def covariance_factor(precision: Tensor) -> tuple[Tensor, Tensor]:
    r"""Lower Cholesky factor of :math:`H^{-1}` and the coordinates that needed a fallback.

    A coordinate with a non-finite row or a non-positive diagonal is decoupled (its
    correlations dropped; its scale :math:`H_{ii}^{-1/2}`, or 1 where that is unusable).
    Where :math:`H` is still not positive definite, the Cholesky factorisation says at
    which coordinate it fails, and that one is decoupled next: coordinate by coordinate.

    Example:
        >>> factor, bad = covariance_factor(torch.tensor([[4.0, 1.0], [1.0, -1.0]]))
        >>> factor.diagonal(), bad
        (tensor([0.5000, 1.0000]), tensor([False,  True]))
    """
    work = precision.detach().double()
    work = (work + work.T) / 2
    diagonal = work.diagonal()
    bad = ~(torch.isfinite(diagonal) & (diagonal > 0))
    # A non-finite coupling to a usable coordinate makes the coordinate itself unusable.
    bad |= (~torch.isfinite(work) & ~bad[None, :]).any(-1)
    work = _decouple(torch.nan_to_num(work), bad)
    for _ in range(work.shape[0]):
        factor, info = torch.linalg.cholesky_ex(work)
        if info.item() == 0:
            break
        bad[info.item() - 1] = True
        work = _decouple(work, bad)
    covariance = torch.cholesky_inverse(factor)
    return torch.linalg.cholesky(covariance).to(precision.dtype), bad


def diagonal_factor(curvature: Tensor, cap: float = math.inf) -> tuple[Tensor, Tensor]:
    r""":math:`\operatorname{diag}(\min(\text{cap}, H_{ii}^{-1/2}))`, 1 where unusable.

    Example:
        >>> diagonal_factor(torch.tensor([4.0, -1.0]))
        (tensor([[0.5000, 0.0000],
                [0.0000, 1.0000]]), tensor([False,  True]))
    """
    bad = ~(torch.isfinite(curvature) & (curvature > 0))
    scale = torch.where(bad, MAX_LOCAL_SCALE, curvature.clamp(min=1e-30).rsqrt())
    return torch.diag(scale.clamp(max=cap)), bad


def gaussian_log_weights(
    potential: Callable[[Tensor], Tensor],
    loc: Tensor,
    scale_tril: Tensor,
    *,
    num_draws: int = 64,
    seed: int = 0,
) -> Tensor | None:
    r""":math:`-U(u_k) - \log q(u_k)` at fixed-seed draws :math:`u_k \sim q = \mathcal
    N(\text{loc}, LL^T)`, shape ``(num_draws,)``; ``None`` if the model cannot score one.

    Example:
        >>> gaussian_log_weights(lambda u: (u**2).sum() / 2, torch.zeros(3), torch.eye(3),
        ...                      num_draws=2)  # q is exp(-U) normalised: log Z = 2.757
        tensor([2.7568, 2.7568])
    """
    generator = torch.Generator(device=loc.device).manual_seed(seed)
    eps = torch.randn((num_draws, loc.numel()), generator=generator, dtype=loc.dtype,
                      device=loc.device)  # fmt: skip
    draws = loc + eps @ scale_tril.T
    log_q = -0.5 * (eps**2).sum(-1) - scale_tril.diagonal().log().sum()
    log_q = log_q - 0.5 * loc.numel() * math.log(2 * math.pi)
    batched = batched_potential(potential, loc)
    try:
        with torch.no_grad():
            if batched is not None:
                score, most = batched
                values = torch.cat([score(part) for part in draws.split(most)])
            else:
                values = torch.stack([potential(draw).reshape(()) for draw in draws])
    except _FAILURES:
        return None
    return -values - log_q


def gaussian_elbo(
    potential: Callable[[Tensor], Tensor],
    loc: Tensor,
    scale_tril: Tensor,
    *,
    num_draws: int = 64,
    seed: int = 0,
) -> float:
    r"""Monte-Carlo :math:`E_q[-U(u) - \log q(u)]` for :math:`q = \mathcal N(\text{loc}, LL^T)`.

    Fixed-seed draws (:func:`gaussian_log_weights`), so two candidates are scored on the
    same noise; ``-inf`` if the model cannot score any draw (a start whose draws overflow
    is no start).

    Example:
        >>> round(gaussian_elbo(lambda u: (u**2).sum() / 2, torch.zeros(3), torch.eye(3)), 3)
        2.757
    """
    return _mean(gaussian_log_weights(potential, loc, scale_tril, num_draws=num_draws, seed=seed))


def _mean(log_w: Tensor | None) -> float:
    total = -math.inf if log_w is None else float(log_w.double().sum())
    return total / len(log_w) if math.isfinite(total) else -math.inf


def log_evidence(log_w: Tensor | None) -> float:
    r"""The importance estimate of :math:`\log Z`, :math:`\log \frac1K \sum_k w_k`, from a
    Gaussian's log weights (:func:`gaussian_log_weights`); ``-inf`` where a draw could not
    be scored. Low in expectation, and lowest for a Gaussian whose draws miss the mass.

    Example:
        >>> round(log_evidence(torch.tensor([0.0, math.log(3.0)])), 4), log_evidence(None)
        (0.6931, -inf)
    """
    if log_w is None or not bool(torch.isfinite(log_w).all()):
        return -math.inf
    return float(torch.logsumexp(log_w.double(), 0) - math.log(len(log_w)))


def kl_estimate(log_w: Tensor | None) -> float:
    r""":math:`\log \frac1K \sum_k w_k - \frac1K \sum_k \log w_k`: the draws' estimate of
    :math:`\log Z - \text{ELBO} = \mathrm{KL}(q \| p)` (low where they miss p's mass).

    Example:
        >>> kl_estimate(torch.tensor([0.0, 0.0])), kl_estimate(None)
        (0.0, inf)
    """
    evidence = log_evidence(log_w)
    return math.inf if evidence == -math.inf else evidence - float(log_w.double().mean())


def _score(start: GaussianStart, potential: Callable, num_draws: int) -> Tensor | None:
    """Set ``start.elbo`` (:func:`gaussian_elbo`) and return the log weights it came from."""
    log_w = gaussian_log_weights(potential, start.loc, start.scale_tril, num_draws=num_draws)
    start.elbo = _mean(log_w)
    return log_w


def local_start(potential: Callable[[Tensor], Tensor], init: Tensor) -> GaussianStart:
    r""":math:`\mathcal N(\text{init}, \operatorname{diag}(\min(1, H_{ii}^{-1/2}))^2)`.

    The curvature at ``init`` narrows only what the data pin down; the cap at 1 is wide on
    purpose, since reverse KL lets a too-narrow start stay narrow (docs/tuning.md).

    Example:
        >>> local_start(lambda u: (u**2).sum() * 50 + (u**2).sum() / 200, torch.zeros(2)).scale
        tensor([0.1000, 0.1000])
    """
    curvature = hessian(potential, init, diagonal=True)
    return GaussianStart(init, *diagonal_factor(curvature, cap=MAX_LOCAL_SCALE), kind="local")


def laplace_start(
    potential: Callable[[Tensor], Tensor],
    init: Tensor,
    *,
    dense: bool = True,
    max_iter: int = 200,
    num_draws: int = 64,
    rule: str = "elbo",
) -> GaussianStart:
    r"""The better of the Laplace Gaussian and a local one, by ``rule`` (``START_RULES``).

    Laplace: :math:`\mathcal N(\hat u, H^{-1})` with the dense :math:`H` (``dense=True``)
    or its diagonal (the best diagonal Gaussian in reverse KL near the mode has precision
    :math:`\operatorname{diag} H`). Local: :math:`\mathcal N(\text{init},
    \operatorname{diag}(\min(1, H_{ii}(\text{init})^{-1/2}))^2)`. Each is scored by
    :func:`gaussian_elbo` on the same draws and, with ``rule="elbo"``, the higher wins:
    the local one where the mode is degenerate (Neal's funnel peaks at a vanishing scale,
    far from the posterior's mass). With ``rule="proper"`` the Laplace Gaussian of a
    proper mode wins whatever its ELBO, unless it misses the mass (:func:`_choose`).
    A search that hits its budget found no mode, so by either rule the start is local.
    The first search's Gaussian is scored before the restarts (:func:`deeper_mode`), and a
    deeper mode found there takes its place. Where the Laplace Gaussian is proper and its
    draws put :math:`\log Z` within ``ALREADY_GOOD`` nats of its ELBO, no Gaussian could
    beat it by more: the local one is not computed (its curvature costs ``D``
    Hessian-vector products), and on a model too large for the restarts to pay
    (:func:`~pyro_realnvp.guide.mode.restarts_pay`) neither are they.

    Example:
        >>> start = laplace_start(lambda u: ((u - 2.0) ** 2).sum() * 50, torch.zeros(2))
        >>> start.kind, start.loc, start.scale
        ('laplace', tensor([2., 2.]), tensor([0.1000, 0.1000]))
    """
    if rule not in START_RULES:
        raise ValueError(f"rule must be one of {START_RULES}, got {rule!r}")
    # Not preconditioned by the local scale: docs/tuning.md says why.
    mode, converged, lowest = _descend(potential, init, None, max_iter)
    if not converged:
        # Still descending at its budget: a potential with no minimum there (a
        # hierarchical scale on its way to zero), whose curvature would start the guide
        # in the degenerate neck, too narrow to leave it (docs/tuning.md, issue 28).
        local = local_start(potential, init)
        _score(local, potential, num_draws)
        return local
    laplace, log_w = _laplace(potential, mode, dense, num_draws)
    if not _already_good(laplace, log_w) or restarts_pay(potential, mode):
        deeper = deeper_mode(potential, init, lowest, max_iter=max_iter)
        if deeper is not None:
            laplace, log_w = _laplace(potential, deeper[0], dense, num_draws)
    if _already_good(laplace, log_w):
        # No Gaussian's ELBO is above log Z, which the draws put within ALREADY_GOOD of
        # this one's: the local candidate could not win by more, so its D curvature rows
        # (most of the start's cost at many latents) are not computed.
        return laplace
    local = local_start(potential, init)
    local_log_w = _score(local, potential, num_draws)
    proper = _proper(laplace)
    return _choose(laplace, log_w, local, local_log_w, rule == "proper" and proper)


def _laplace(
    potential: Callable, mode: Tensor, dense: bool, num_draws: int
) -> tuple[GaussianStart, Tensor | None]:
    """The Laplace Gaussian at ``mode``, scored (:func:`_score`), and its log weights."""
    curvature = hessian(potential, mode, diagonal=not dense)
    factor, bad = covariance_factor(curvature) if dense else diagonal_factor(curvature)
    laplace = GaussianStart(mode, factor, bad, kind="laplace")
    return laplace, _score(laplace, potential, num_draws)


def _proper(laplace: GaussianStart) -> bool:
    """Every coordinate's curvature usable, and a finite ELBO."""
    return not bool(laplace.bad.any()) and math.isfinite(laplace.elbo)


def _already_good(laplace: GaussianStart, log_w: Tensor | None) -> bool:
    """Proper, with its draws putting log Z within ``ALREADY_GOOD`` nats of its ELBO."""
    return _proper(laplace) and kl_estimate(log_w) < ALREADY_GOOD


def _choose(
    laplace: GaussianStart, log_w: Tensor, local: GaussianStart, local_log_w: Tensor, proper: bool
) -> GaussianStart:
    """The candidate of the higher ELBO; with ``proper`` (the proper rule at a proper mode)
    the Laplace one whatever its ELBO, ``elbo_choice`` holding the start the ELBO would have
    taken. A banana's Laplace Gaussian scores far below a local one since its x2 does not
    bend, yet it has x1's width, which tail-adaptive weights keep and reverse KL narrows
    (docs/math.md, docs/tuning.md). But not where the local draws find more than
    ``MASS_GAP`` nats more mass (:func:`log_evidence`): a funnel's neck is a proper mode in
    float64, yet its Gaussian holds none of the posterior's mass."""
    if proper and log_evidence(local_log_w) - log_evidence(log_w) <= MASS_GAP:
        if laplace.elbo < local.elbo:
            laplace.elbo_choice = local
        return laplace
    return laplace if laplace.elbo >= local.elbo else local

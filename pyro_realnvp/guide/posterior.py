r"""The guide's posterior :math:`q(u)`, :math:`u = \mu + L f(\varepsilon)`, and the
log-density its path gradient needs (Roeder et al. 2017, "Sticking the landing").

The path-gradient estimator keeps the value of :math:`\log q(u)` and drops its
score-function part: the gradient of :math:`\log q_\phi(u)` is only
:math:`\nabla_u \log q(u) \cdot \partial u / \partial \phi`, with :math:`\nabla_u \log q`
a constant (docs/math.md). It comes from an inverse pass with detached parameters
(:func:`inverse_log_density`) or, cheaper, from the score carried through the draw's own
forward pass (:func:`path_gradient_draw`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial

import pyro.distributions as dist
import torch
from pyro.distributions.transforms import AffineTransform, LowerCholeskyAffine
from torch import Tensor

__all__ = [
    "PathGradientPosterior",
    "affine_transform",
    "inverse_log_density",
    "path_gradient_draw",
    "path_posterior",
    "standard_normal",
    "standard_normal_log_prob",
    "total_gradient_draw",
]

Affine = LowerCholeskyAffine | AffineTransform


def standard_normal_log_prob(eps: Tensor) -> Tensor:
    r""":math:`\log \mathcal N(\varepsilon; 0, I)` summed over the last dimension, in three
    operations, not a distribution's dozen: it runs at every step.

    Example:
        >>> standard_normal_log_prob(torch.zeros(2))  # -log(2 pi)
        tensor(-1.8379)
    """
    return -0.5 * (eps.pow(2).sum(-1) + eps.shape[-1] * math.log(2 * math.pi))


def standard_normal(like: Tensor) -> dist.Distribution:
    r""":math:`\mathcal N(0, I)` over the last dimension of ``like``, of its dtype and
    device. Not validated: its arguments are valid by construction, and the check would
    sync a GPU at every step.

    Example:
        >>> standard_normal(torch.zeros(3)).log_prob(torch.zeros(3))  # -1.5 log(2 pi)
        tensor(-2.7568)
    """
    zeros = torch.zeros_like(like)
    return dist.Normal(zeros, torch.ones_like(zeros), validate_args=False).to_event(1)


def affine_transform(
    loc: Tensor, scale: Tensor, unit_tril: Tensor | None = None, detach: bool = False
) -> Affine:
    r""":math:`u = \mu + L x`, :math:`L = \operatorname{diag}(\sigma) U` (``U`` the identity
    where ``unit_tril`` is ``None``); with ``detach`` its parameters carry no gradient.

    Example:
        >>> affine = affine_transform(torch.ones(2), torch.full((2,), 2.0))
        >>> affine(torch.ones(2))
        tensor([3., 3.])
    """
    if detach:
        loc, scale = loc.detach(), scale.detach()
    if unit_tril is not None:
        unit = unit_tril.detach() if detach else unit_tril
        return LowerCholeskyAffine(loc, scale[..., None] * unit, cache_size=1)
    return AffineTransform(loc, scale, event_dim=1, cache_size=1)


def inverse_log_density(flow, affine: Affine, u: Tensor) -> Tensor:
    r""":math:`\log q(u)` by one inverse pass, :math:`x = L^{-1}(u - \mu)`,
    :math:`\varepsilon = f^{-1}(x)`: :math:`\log \mathcal N(\varepsilon) - \log|\det J_f|
    - \log|\det L|`, with the flow's parameters detached (``affine`` should be too).

    Example:
        >>> from pyro_realnvp.flows import RealNVP
        >>> affine = affine_transform(torch.zeros(2), torch.ones(2))
        >>> inverse_log_density(RealNVP(2, num_layers=2), affine, torch.zeros(1, 2))
        tensor([-1.8379])
    """
    x = affine.inv(u)
    eps, flow_log_det = flow.inverse_and_log_det(x, detach=True)
    log_det = flow_log_det + affine.log_abs_det_jacobian(x, u)
    return standard_normal_log_prob(eps) - log_det


def _affine_score(affine: Affine, score: Tensor) -> Tensor:
    """The score at ``u = loc + L x`` from the score at ``x``: :math:`L^{-T} g`."""
    if not isinstance(affine, LowerCholeskyAffine):
        return score / affine.scale
    # As rows, g^T L^{-1}; solve_triangular wants a matrix, so one draw becomes a row.
    rows = score.unsqueeze(-2) if score.dim() == 1 else score
    rows = torch.linalg.solve_triangular(affine.scale_tril, rows, upper=False, left=False)
    return rows.squeeze(-2) if score.dim() == 1 else rows


def path_gradient_draw(
    flow, affine: Affine, eps: Tensor, log_density: Callable[[Tensor], Tensor]
) -> tuple[Tensor, Tensor]:
    r"""``(u, log q(u))`` at base noise ``eps``, ``log q`` with the path gradient only.

    Where the flow allows (``flow.supports_score()``) the score is carried through the
    draw's own forward pass, :math:`\nabla_u \log q = L^{-T} \nabla_x \log q_X(x)` from
    :math:`\nabla_\varepsilon = -\varepsilon`, so no inverse pass runs; otherwise
    ``log_density(u)`` (:func:`inverse_log_density` with detached parameters) scores the
    draw. Without gradients (``torch.no_grad``) only the value is computed.

    Example:
        >>> from pyro_realnvp.flows import RealNVP
        >>> flow = RealNVP(2, num_layers=2)
        >>> affine = affine_transform(torch.zeros(2), torch.ones(2))
        >>> u, log_q = path_gradient_draw(flow, affine, torch.zeros(1, 2), None)
        >>> u, log_q
        (tensor([[0., 0.]], grad_fn=<AddBackward0>), tensor([-1.8379], grad_fn=<AddBackward0>))
    """
    score = None
    if torch.is_grad_enabled() and flow.supports_score():
        x, flow_log_det, score = flow.forward_with_score(eps, -eps)
    else:
        x, flow_log_det = flow.forward_and_log_det(eps)
    u = affine(x)
    if torch.is_grad_enabled() and score is None:
        return u, log_density(u)
    # detach() as well as no_grad: torch.jit.trace (Pyro's JIT ELBOs) does not record
    # no_grad, and its replay would differentiate through these constants.
    with torch.no_grad():
        log_q = standard_normal_log_prob(eps) - flow_log_det
        log_q = (log_q - affine.log_abs_det_jacobian(x, u)).detach()
        if score is None:
            return u, log_q
        score = _affine_score(affine, score).detach()
    return u, log_q + ((u - u.detach()) * score).sum(-1)


def total_gradient_draw(
    flow, affine: Affine, base: dist.Distribution, eps: Tensor
) -> tuple[Tensor, Tensor]:
    r"""``(u, log q(u))`` at base noise ``eps``, ``log q`` with its total gradient (the
    score-function part too), as ``TransformedDistribution`` would give it.

    Example:
        >>> from pyro_realnvp.flows import RealNVP
        >>> affine = affine_transform(torch.zeros(2), torch.ones(2))
        >>> base = dist.Normal(torch.zeros(2), 1.0).to_event(1)
        >>> total_gradient_draw(RealNVP(2, num_layers=2), affine, base, torch.zeros(1, 2))[1]
        tensor([-1.8379], grad_fn=<SubBackward0>)
    """
    x, flow_log_det = flow.forward_and_log_det(eps)
    u = affine(x)
    log_det = flow_log_det + affine.log_abs_det_jacobian(x, u)
    return u, base.log_prob(eps) - log_det


class PathGradientPosterior(dist.TransformedDistribution):
    r"""A ``TransformedDistribution`` whose ``log_prob`` treats its parameters as constants.

    Sampling is the usual reparameterised :math:`u = T_\phi(\varepsilon)`; ``log_prob(u)``
    is ``log_density(u)``, the same value with :math:`\phi` detached, so in an ELBO the
    gradient of :math:`\log q_\phi(u)` is only the path term :math:`\nabla_u \log q
    \cdot \partial u/\partial\phi` (Roeder et al., 2017). With ``draw`` (such as
    :meth:`~pyro_realnvp.AutoRealNVP.path_draw`) a draw's own log-density is kept, so an
    ELBO scoring that very draw next needs no inverse pass.

    Example:
        >>> from pyro_realnvp.flows import RealNVP
        >>> flow = RealNVP(2, num_layers=2)
        >>> affine = affine_transform(torch.zeros(2), torch.ones(2))
        >>> base = dist.Normal(torch.zeros(2), 1.0).to_event(1)
        >>> q = PathGradientPosterior(base, [flow, affine],
        ...                           lambda u: inverse_log_density(flow, affine, u))
        >>> q.log_prob(torch.zeros(2))
        tensor(-1.8379)
    """

    arg_constraints: dict = {}

    def __init__(self, base_distribution, transforms, log_density, draw=None, validate_args=None):
        super().__init__(base_distribution, transforms, validate_args=validate_args)
        self._log_density, self._draw = log_density, draw
        self._last_draw: tuple[Tensor, int, Tensor] | None = None

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(PathGradientPosterior, _instance)
        new = super().expand(batch_shape, _instance=new)
        new._log_density, new._draw, new._last_draw = self._log_density, self._draw, None
        return new

    def rsample(self, sample_shape=()) -> Tensor:
        if self._draw is None:
            return super().rsample(sample_shape)
        value, log_prob = self._draw(self.base_dist.rsample(sample_shape))
        self._last_draw = (value, value._version, log_prob)
        return value

    def log_prob(self, value: Tensor) -> Tensor:
        last = self._last_draw
        if last is not None and value is last[0] and value._version == last[1]:
            # The draw itself, unmodified; without gradients, a constant as the inverse
            # pass would give.
            log_prob = last[2] if torch.is_grad_enabled() else last[2].detach()
        else:
            log_prob = self._log_density(value)
        if log_prob.shape == self.batch_shape:  # torch.broadcast_shapes is slow Python
            return log_prob
        return log_prob.expand(torch.broadcast_shapes(log_prob.shape, self.batch_shape))


def path_posterior(
    base: dist.Distribution,
    transform: dist.transforms.ComposeTransform,
    flow,
    log_density: Callable[[Tensor], Tensor],
    watch: Callable[[Tensor], None] | None = None,
) -> PathGradientPosterior:
    r"""The :class:`PathGradientPosterior` of ``transform = [flow, affine]`` whose draws
    are scored by their own forward pass (:func:`path_gradient_draw`) through this very
    ``affine``: rebuilding it would read its parameters again, one ``param`` statement
    each, at every step. ``watch`` is called with each draw (a hook to place on it).

    Example:
        >>> from pyro_realnvp.flows import RealNVP
        >>> flow = RealNVP(2, num_layers=2)
        >>> affine = affine_transform(torch.zeros(2), torch.ones(2))
        >>> base = dist.Normal(torch.zeros(2), 1.0).to_event(1)
        >>> q = path_posterior(base, dist.transforms.ComposeTransform([flow, affine]), flow,
        ...                    lambda u: inverse_log_density(flow, affine, u))
        >>> u = q.rsample((3,))
        >>> torch.allclose(q.log_prob(u), inverse_log_density(flow, affine, u))
        True
    """
    affine = transform.parts[-1]
    draw = partial(path_gradient_draw, flow, affine, log_density=log_density)
    if watch is not None:
        draw = partial(_watched, draw, watch)
    return PathGradientPosterior(base, transform, log_density, draw)


def _watched(
    draw: Callable[[Tensor], tuple[Tensor, Tensor]], watch: Callable[[Tensor], None], eps: Tensor
) -> tuple[Tensor, Tensor]:
    u, log_q = draw(eps)
    watch(u)
    return u, log_q

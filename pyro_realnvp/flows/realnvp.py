"""RealNVP: a stack of masked affine couplings whose masks alternate ``b, 1 - b``.

With the lowercase factories of the couplings and the stack, as Pyro's transforms have.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from pyro.distributions.torch_transform import TransformModule
from torch import Tensor, nn

from .._internal.checks import check_int
from . import score_pass
from .coupling import MaskedAffineCoupling
from .masks import alternating_mask, coupling_masks
from .one_pass import OnePassLogDet, _check_dtype

__all__ = ["RealNVP", "masked_affine_coupling", "realnvp"]


class RealNVP(OnePassLogDet, TransformModule):
    r"""Stacked couplings, :math:`f = f_L \circ \dots \circ f_1`, masks ``b, 1-b, b', 1-b', ...``.

    :math:`\log|\det \partial f/\partial x| = \sum_l \sum_i (1 - b^{(l)}_i) s^{(l)}_i`,
    accumulated during the same pass that computes ``f(x)`` (or its inverse), so
    :meth:`log_abs_det_jacobian` after a call costs nothing. Masks come from
    :func:`~pyro_realnvp.flows.masks.coupling_masks`: every pair of layers moves every
    coordinate. For ``input_dim = 1`` each layer is an affine map with learned constant
    scale and shift (its conditioner sees only zeros), so the flow is affine.

    Args:
        input_dim: Event size ``D``; inputs have shape ``(..., D)``.
        num_layers: Number of coupling layers (use an even number so each mask has its
            complement).
        hidden_dims: Conditioner hidden widths; default
            :func:`~pyro_realnvp.flows.coupling.default_hidden_dims`.
        groups: Sizes of consecutive runs of coordinates (a model's sites, as
            :class:`~pyro_realnvp.AutoRealNVP` passes them): coordinates of different
            groups are split by as many pairs of layers as the mask bits allow, and only
            a group's own may share every layer (see
            :func:`~pyro_realnvp.flows.masks.coupling_masks`); ``None``: by index.
        **coupling_options: Every coupling's keyword options, as
            :class:`~pyro_realnvp.MaskedAffineCoupling` takes them: ``scale_bound``,
            ``output_gain``, ``activation``, ``context_dim`` (a context fed to every
            conditioner; see :class:`~pyro_realnvp.ConditionalRealNVP`, which is how to
            use it), ``fan_in_scaling`` (what :class:`~pyro_realnvp.AutoRealNVP` uses),
            ``device`` and ``dtype``.

    Example:
        >>> import torch
        >>> flow = RealNVP(3, num_layers=4, hidden_dims=(16,))
        >>> x = torch.randn(5, 3)
        >>> y = flow(x)
        >>> torch.allclose(flow.inv(y.clone()), x)
        True
    """

    def __init__(
        self,
        input_dim: int,
        num_layers: int = 8,
        hidden_dims: Sequence[int] | None = None,
        *,
        groups: Sequence[int] | None = None,
        **coupling_options,
    ) -> None:
        super().__init__(cache_size=1)
        if "net" in coupling_options or "mask" in coupling_options:
            raise TypeError("RealNVP builds each coupling's mask and net; use from_couplings")
        input_dim = check_int("input_dim", input_dim, 1)
        num_layers = check_int("num_layers", num_layers, 1)
        layers = [
            MaskedAffineCoupling(mask, hidden_dims, **coupling_options)
            for mask in coupling_masks(input_dim, num_layers, groups=groups)
        ]
        self._stack(layers)

    @classmethod
    def from_couplings(cls, couplings: Sequence[MaskedAffineCoupling]) -> RealNVP:
        """A RealNVP over couplings built elsewhere, applied in the order given.

        This is how other architectures reuse the stack, e.g.
        :func:`~pyro_realnvp.flows.image.multiscale_realnvp` (masks on images, convolutional
        conditioners). All couplings must share the event size and ``context_dim``.

        Example:
            >>> from pyro_realnvp.flows.masks import alternating_mask
            >>> layers = [MaskedAffineCoupling(alternating_mask(3, p), (8,)) for p in (0, 1)]
            >>> RealNVP.from_couplings(layers).input_dim
            3
        """
        couplings = list(couplings)
        if not couplings:
            raise ValueError("from_couplings needs at least one coupling")
        sizes = {(c.mask.numel(), c.context_dim) for c in couplings}
        if len(sizes) > 1:
            raise ValueError(f"couplings disagree on (event size, context_dim): {sorted(sizes)}")
        flow = cls.__new__(cls)
        TransformModule.__init__(flow, cache_size=1)
        flow._stack(couplings)
        return flow

    def _stack(self, couplings: list[MaskedAffineCoupling]) -> None:
        self.input_dim = couplings[0].mask.numel()
        self.context_dim = couplings[0].context_dim
        self.layers = nn.ModuleList(couplings)
        # Found once here and after loading a state (which may bring other masks):
        # comparing masks at every pass would sync a GPU.
        self._groups = _complementary_groups(couplings)
        self.register_load_state_dict_post_hook(_regroup_after_load)

    def __setstate__(self, state: dict) -> None:
        # Flows pickled before the groups existed.
        super().__setstate__(state)
        if "_groups" not in self.__dict__:
            self._groups = _complementary_groups(list(self.layers))

    def forward_and_log_det(
        self, x: Tensor, context: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """``(f(x), log|det J_f(x)|)`` in one pass; ``context`` only for a conditional flow.

        Unlike a call, this neither reads nor fills the transform's one-slot cache.

        Example:
            >>> flow = RealNVP(3, num_layers=2)
            >>> y, log_det = flow.forward_and_log_det(torch.ones(4, 3))
            >>> y.shape, log_det.shape
            (torch.Size([4, 3]), torch.Size([4]))
        """
        self._check_inputs(x, context)
        return self._run(x, self._groups, context, False, +1)[:2]

    def inverse_and_log_det(
        self, y: Tensor, context: Tensor | None = None, detach: bool = False
    ) -> tuple[Tensor, Tensor]:
        """``(f^{-1}(y), log|det J_f|)`` at the result, in one pass: the forward map's
        log-det. With ``detach`` every parameter is a constant: gradients reach only ``y``.

        Example:
            >>> flow = RealNVP(3, num_layers=2)
            >>> x, _ = flow.inverse_and_log_det(torch.ones(4, 3))
            >>> torch.equal(x, torch.ones(4, 3))  # a fresh flow is the identity
            True
        """
        self._check_inputs(y, context)
        groups = [group[::-1] for group in self._groups[::-1]]
        return self._run(y, groups, context, detach, -1)[:2]

    def forward_with_score(self, x: Tensor, score: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        r"""``(y, log|det|, \nabla_y \log q_Y(y))`` for ``y = f(x)``, where ``score`` is
        :math:`\nabla_x \log q_X(x)` and :math:`q_Y` the density ``f`` pushes :math:`q_X`
        to. The score is carried through each coupling without autograd
        (:mod:`pyro_realnvp.flows.conditioner`), as the path gradient needs it: a
        constant. Only where :meth:`supports_score`.

        Example:
            >>> flow = RealNVP(3, num_layers=2)
            >>> eps = torch.randn(4, 3)
            >>> _, _, score = flow.forward_with_score(eps, -eps)
            >>> torch.equal(score, -eps)  # the identity keeps the standard normal's score
            True
        """
        self._check_inputs(x)
        if x.dim() > 1 or not score_pass.applies(x):
            return self._run(x, self._groups, None, False, +1, score)
        # One draw (Pyro's one-particle loop), where each operation is the cost: the pass as
        # one autograd node (flows.score_pass). A batch shares that cost among its draws,
        # and keeps the recorded pass's rounding (docs/tuning.md).
        y, log_det, score = score_pass.score_pass(self, x.unsqueeze(0), score.unsqueeze(0))
        return y.squeeze(0), log_det.squeeze(0), score.squeeze(0)

    def _check_inputs(self, x: Tensor, context: Tensor | None = None) -> None:
        """Refuse, by name, an input or a context of the wrong type, width or dtype: tests
        of metadata only, no device sync. An integer context passes: the conditioners'
        concatenation promotes it to the parameters' dtype."""
        dtype = self.layers[0].factor.dtype
        self._check_event(x, self.input_dim, dtype)
        if context is None:
            return
        if not isinstance(context, Tensor):
            raise TypeError(f"context must be a torch.Tensor, got {type(context).__name__}")
        if torch.promote_types(context.dtype, dtype) != dtype:
            _check_dtype(type(self).__name__, "context", "context", context, dtype)

    def supports_score(self) -> bool:
        """Whether :meth:`forward_with_score` applies: plain conditioners of known
        activations (:func:`~pyro_realnvp.flows.conditioner.supports_score`) and no context."""
        return all(layer._supports_score() for layer in self.layers)

    @staticmethod
    def _run(
        x: Tensor,
        groups: list[list],
        context: Tensor | None,
        detach: bool,
        sign: int,
        score: Tensor | None = None,
        records: list | None = None,
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """Apply the grouped layers in order (``sign`` -1: their inverses), with the summed
        log-scales and, given the input's ``score``, the output's (and each coupling's
        ``(tape, free input)`` appended to ``records``, for a backward pass by hand:
        :mod:`~pyro_realnvp.flows.score_pass`). Within a group each
        layer keeps what the one before moved, so the kept and moved halves pass straight
        on: a pair ``b, 1 - b`` splits and merges the coordinates once, rather than each
        layer gathering and scattering them.

        One draw, shape ``(D,)``, runs as a batch of one: its linear layers are then one
        ``addmm`` each, where a vector costs reshapes and a scaled copy of the weight,
        forward and backward (Pyro's one-particle loop draws vectors)."""
        if x.dim() == 1:
            score = None if score is None else score.unsqueeze(0)
            y, log_det, score = RealNVP._run(
                x.unsqueeze(0), groups, context, detach, sign, score, records
            )
            return y.squeeze(0), log_det.squeeze(0), None if score is None else score.squeeze(0)
        log_scales = []
        for group in groups:
            kept, free = group[0]._split(x)
            scores = None if score is None else group[0]._split(score)
            for layer in group:
                tape = None if score is None else []
                s, t = layer._scale_shift(kept, context, detach, tape)
                if tape is None:
                    moved = layer._move(free, s, t, sign)
                else:
                    moved, scores = layer._move_with_score(tape, free, s, t, scores)
                    if records is not None:
                        records.append((tape, free))
                kept, free = moved, kept
                log_scales.append(s)
            if len(group) % 2:
                kept, free = free, kept
                scores = None if scores is None else scores[::-1]
            x = group[0]._merge(kept, free)
            score = None if scores is None else group[0]._merge(*scores)
        return x, torch.cat(log_scales, dim=-1).sum(-1), score

    def _forward_pass(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.forward_and_log_det(x)

    def _backward_pass(self, y: Tensor) -> tuple[Tensor, Tensor]:
        return self.inverse_and_log_det(y)


def realnvp(input_dim: int, num_layers: int = 8, **kwargs) -> RealNVP:
    """Lowercase factory for :class:`RealNVP`, in the style of Pyro's transform factories.

    Example:
        >>> len(realnvp(6, num_layers=4).layers)
        4
    """
    return RealNVP(input_dim, num_layers, **kwargs)


def masked_affine_coupling(
    input_dim: int, hidden_dims: Sequence[int] | None = None, *, parity: int = 0, **kwargs
) -> MaskedAffineCoupling:
    """A :class:`MaskedAffineCoupling` with an alternating mask, like Pyro's ``affine_coupling``.

    Example:
        >>> masked_affine_coupling(4, parity=1).mask
        tensor([0., 1., 0., 1.])
    """
    input_dim = check_int("input_dim", input_dim, 1)
    return MaskedAffineCoupling(alternating_mask(input_dim, parity), hidden_dims, **kwargs)


def _complementary_groups(layers: list[MaskedAffineCoupling]) -> list[list[MaskedAffineCoupling]]:
    """``layers`` cut into runs in which each layer keeps what the one before moved."""
    groups: list[list[MaskedAffineCoupling]] = []
    for layer in layers:
        last = groups[-1][-1] if groups else None
        if last is not None and torch.equal(layer.mask, 1 - last.mask):
            groups[-1].append(layer)
        else:
            groups.append([layer])
    return groups


def _regroup_after_load(flow: RealNVP, incompatible_keys) -> None:
    flow._groups = _complementary_groups(list(flow.layers))

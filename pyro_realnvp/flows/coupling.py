"""One RealNVP affine coupling layer with a binary mask."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch
from pyro.distributions.torch_transform import TransformModule
from torch import Tensor, nn

from .._internal.checks import check_hidden_dims, check_int
from .conditioner import (
    conditioner,
    is_plain_mlp,
    mlp_call,
    recorded_call,
    supports_score,
    unscaled_vjp,
)
from .one_pass import OnePassLogDet

__all__ = ["MaskedAffineCoupling", "check_mask", "default_hidden_dims"]


def default_hidden_dims(input_dim: int) -> tuple[int, int]:
    """Two hidden layers of width ``4 * input_dim``, kept within ``[32, 256]``.

    Example:
        >>> default_hidden_dims(10)
        (40, 40)
    """
    width = min(max(4 * input_dim, 32), 256)
    return (width, width)


def check_mask(mask: Tensor, dim: int | None = None) -> Tensor:
    """Validate a coupling mask and return it as a floating tensor.

    Raises:
        ValueError: if the mask is not one-dimensional, is empty, has the wrong length,
            holds values other than 0 and 1, or keeps every coordinate (the layer would be
            the identity).

    Example:
        >>> check_mask(torch.tensor([1, 0, 1]))
        tensor([1., 0., 1.])
    """
    mask = torch.as_tensor(mask)
    if mask.dim() != 1:
        raise ValueError(f"mask must be one-dimensional, got shape {tuple(mask.shape)}")
    if mask.numel() == 0:
        raise ValueError("mask is empty: a coupling needs at least one coordinate")
    if dim is not None and mask.shape != (dim,):
        raise ValueError(f"mask must have shape ({dim},), got {tuple(mask.shape)}")
    if not bool(((mask == 0) | (mask == 1)).all()):
        raise ValueError(f"mask must be binary (only 0 and 1), got {mask.tolist()}")
    if bool((mask == 1).all()):
        raise ValueError(
            "mask keeps every coordinate (all ones), so the coupling would be the identity; "
            "at least one entry must be 0"
        )
    if not mask.is_floating_point():
        mask = mask.to(torch.get_default_dtype())
    return mask


def _check_positive(name: str, value: float, infinity: str = "", note: str = "") -> float:
    """``value`` as a float if it is a real number ``> 0``, finite unless ``infinity`` says
    what ``math.inf`` means; else a ``TypeError`` (not a number) or ``ValueError`` naming it,
    with ``note`` (why) after the range."""
    allowed = (
        f"positive, a number > 0 ({infinity})" if infinity else "positive and finite, a number > 0"
    )
    message = f"{name} must be {allowed}{note}, got {value!r}"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(message)
    if not (0 < value < math.inf or (infinity and value == math.inf)):
        raise ValueError(message)
    return float(value)


class MaskedAffineCoupling(OnePassLogDet, TransformModule):
    r"""RealNVP affine coupling, :math:`y = b x + (1-b)(x e^{s(bx)} + t(bx))`.

    The inverse is :math:`x = b y + (1-b)(y - t(by)) e^{-s(by)}` and
    :math:`\log|\det \partial y/\partial x| = \sum_i (1-b_i) s_i(bx)` (Dinh et al. 2017,
    "Density estimation using Real NVP"). One conditioner gives ``s`` and ``t``; its last
    layer starts at zero, so a new layer is exactly the identity. The log-scale is
    bounded, :math:`s = \text{bound} \tanh(\cdot / \text{bound})`, so ``exp(s)`` cannot
    overflow; with a finite ``input_bound`` the conditioner reads ``clamp(bx, ±bound)``,
    so far out the layer is affine and the flow grows at most linearly (docs/math.md).

    Args:
        mask: Binary mask ``b`` of shape ``(D,)``; ones are kept, zeros transformed.
        hidden_dims: Widths of the conditioner's hidden layers.
        scale_bound: Bound on the per-coordinate log-scale of one layer.
        output_gain: Fixed factor on the conditioner's output, so one Adam step at
            ``lr=1e-2`` moves ``s`` and ``t`` by about ``lr`` (docs/math.md).
        activation: Hidden activation of the conditioner.
        context_dim: Width of an optional context ``c`` the conditioner reads beside
            ``bx`` (what :class:`~pyro_realnvp.ConditionalRealNVP` builds on).
        fan_in_scaling: Build the MLP of
            :class:`~pyro_realnvp.flows.conditioner.ScaledLinear` layers.
        input_bound: Clamp on the kept coordinates the conditioner reads.
        net: A conditioner to use instead of the MLP, mapping ``x[..., kept]`` (then the
            context) to the raw log-scales then the shifts of the free coordinates,
            starting at zero (e.g. :class:`~pyro_realnvp.ConvConditioner` for images).
        device, dtype: Where the parameters live.

    Example:
        >>> layer = MaskedAffineCoupling(torch.tensor([1.0, 0.0, 1.0, 0.0]), hidden_dims=(16,))
        >>> x = torch.randn(8, 4)
        >>> layer.log_abs_det_jacobian(x, layer(x)).shape
        torch.Size([8])
    """

    def __init__(
        self,
        mask: Tensor,
        hidden_dims: Sequence[int] | None = None,
        *,
        scale_bound: float = 5.0,
        output_gain: float = 0.1,
        activation: type[nn.Module] = nn.ELU,
        context_dim: int = 0,
        fan_in_scaling: bool = False,
        input_bound: float = math.inf,
        net: nn.Module | None = None,
        device=None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(cache_size=1)
        mask = check_mask(mask)
        scale_bound = _check_positive("scale_bound", scale_bound)
        why = " (at 0, s and t stay 0 with no gradient: the layer never leaves the identity)"
        output_gain = _check_positive("output_gain", output_gain, note=why)
        self.input_bound = _check_positive("input_bound", input_bound, "math.inf: no bound")
        context_dim = check_int("context_dim", context_dim, 0)
        dim = mask.numel()
        hidden_dims = default_hidden_dims(dim) if hidden_dims is None else hidden_dims
        hidden_dims = check_hidden_dims(hidden_dims) if net is None else hidden_dims
        self.register_buffer("mask", mask.to(device=device, dtype=dtype or mask.dtype))
        # The conditioner sees only the kept coordinates and predicts only the free ones:
        # masking instead would carry zero columns and rows, twice the work at large D.
        self.register_buffer("kept", torch.nonzero(mask).squeeze(-1).to(device))
        self.register_buffer("free", torch.nonzero(mask == 0).squeeze(-1).to(device))
        self.scale_bound, self.output_gain = scale_bound, output_gain
        self._derive_buffers(dtype or torch.get_default_dtype())
        # A loaded state may bring other masks: derive again from what was loaded.
        self.register_load_state_dict_post_hook(_rederive_after_load)
        self.context_dim = int(context_dim)
        if net is None:
            net = conditioner(
                len(self.kept) + self.context_dim,
                2 * len(self.free),
                hidden_dims,
                activation=activation,
                fan_in_scaling=fan_in_scaling,
                device=device,
                dtype=dtype,
            )
        self.net = net

    def _scale_shift(
        self,
        h: Tensor,
        context: Tensor | None = None,
        detach: bool = False,
        tape: list[Tensor] | None = None,
    ) -> tuple[Tensor, Tensor]:
        """``(s, t)`` of the free coordinates from the kept ones ``h`` (and the context).

        The only place the conditioner, its split and the scale bound live. With
        ``detach`` the conditioner's parameters are constants (the path gradient). A
        ``tape`` list receives what :meth:`_move_with_score` needs: ``h`` (clamped), the
        conditioner's activations, ``tanh`` of the scaled log-scale.
        """
        if self.input_bound < math.inf:
            # clamp's values, and a derivative that is one kernel to repeat in
            # _move_with_score; it is 0 exactly on the bound, where clamp's is 1 (a point
            # no continuous draw lands on). From the clamped values it is the same.
            h = nn.functional.hardtanh(h, -self.input_bound, self.input_bound)
        if tape is not None:
            tape.append(h)
        if context is not None:
            # Batch shapes of x and context broadcast, so one context serves many x.
            batch = torch.broadcast_shapes(h.shape[:-1], context.shape[:-1])
            h = torch.cat([h.expand(*batch, -1), context.expand(*batch, -1)], dim=-1)
        elif self.context_dim:
            raise ValueError(
                f"this coupling has context_dim={self.context_dim} and needs a context; "
                "use it through ConditionalRealNVP(...).condition(context)"
            )
        if tape is None:
            out = mlp_call(self.net, h, detach, self._net_is_plain())
        else:
            out = recorded_call(self.net, h, tape)
        # soft_clamp(output_gain * out_s, scale_bound), with one product for s and t.
        s, t = (out * self.factor).chunk(2, dim=-1)
        s = torch.tanh(s)
        if tape is not None:
            tape.append(s)
        return self.scale_bound * s, t

    def _move_with_score(
        self, tape: list[Tensor], free: Tensor, s: Tensor, t: Tensor, score: tuple[Tensor, Tensor]
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        r"""``(x_f e^s + t, (w_free, w_kept))``: the layer's move, and the density's score
        after it from the score ``(g_kept, g_free)`` before it, at the moved and the kept
        coordinates (see :mod:`pyro_realnvp.flows.conditioner`). ``tape`` is what
        :meth:`_scale_shift` recorded; ``exp(s)`` is appended to it. The score is a
        constant: no graph is built for it.
        """
        scale = torch.exp(s)  # shared by the move and the score
        moved = free * scale + t
        with torch.no_grad():
            h, *activations, tanh = tape
            w_free = score[1] / scale
            # The log-scale's cotangent (y_f - t) w_free + 1, as x_f g_free + 1: equal,
            # and one operation fewer.
            cot_s = torch.ops.aten.tanh_backward(free * score[1] + 1.0, tanh)
            cot = torch.cat([cot_s, w_free], dim=-1)
            cot, gain = unscaled_vjp(self.net, activations, cot, self.output_gain)
            if self.input_bound < math.inf:
                bound = self.input_bound
                cot = torch.ops.aten.hardtanh_backward(cot, h, -bound, bound)
            tape.append(scale)  # for a backward pass by hand (flows.score_pass)
            return moved, (w_free, torch.sub(score[0], cot, alpha=gain))

    def _supports_score(self) -> bool:
        """Whether :meth:`_move_with_score` applies: no context and a conditioner that
        :func:`~pyro_realnvp.flows.conditioner.supports_score` accepts."""
        return not self.context_dim and supports_score(self.net)

    def _derive_buffers(self, dtype: torch.dtype) -> None:
        """Buffers derived from the mask and the options, so not saved in the state."""
        # Where each coordinate of cat([kept, free]) belongs.
        unsplit = torch.cat([self.kept, self.free]).argsort()
        # One product applies the output gain to s and t and 1 / scale_bound to s.
        factor = [self.output_gain / self.scale_bound] * len(self.free)
        factor += [self.output_gain] * len(self.free)
        factor = torch.tensor(factor, dtype=dtype, device=self.kept.device)
        for name, value in (("unsplit", unsplit), ("factor", factor)):
            if name in self._buffers:
                self._buffers[name] = value
            else:
                self.register_buffer(name, value, persistent=False)

    def __setstate__(self, state: dict) -> None:
        # Couplings pickled before input_bound and the derived buffers existed.
        super().__setstate__(state)
        self.__dict__.setdefault("input_bound", math.inf)
        if "factor" not in self._buffers:
            self._derive_buffers(self.mask.dtype)

    def _net_is_plain(self) -> bool:
        """Whether the conditioner is a plain MLP, checked once per net it is given."""
        if self.__dict__.get("_plain_for") is not self.net:
            self.__dict__["_plain"] = is_plain_mlp(self.net)
            self.__dict__["_plain_for"] = self.net
        return self.__dict__["_plain"]

    @staticmethod
    def _move(free: Tensor, s: Tensor, t: Tensor, sign: int) -> Tensor:
        """``x_f e^s + t`` (sign +1) or its inverse ``(x_f - t) e^{-s}`` (sign -1)."""
        return free * torch.exp(s) + t if sign > 0 else (free - t) * torch.exp(-s)

    def _split(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(x_kept, x_free)``."""
        return x.index_select(-1, self.kept), x.index_select(-1, self.free)

    def _merge(self, kept: Tensor, free: Tensor) -> Tensor:
        """The inverse of :meth:`_split`; a broadcast context may have widened ``free``."""
        if kept.shape[:-1] != free.shape[:-1]:
            batch = torch.broadcast_shapes(kept.shape[:-1], free.shape[:-1])
            kept, free = kept.expand(*batch, -1), free.expand(*batch, -1)
        return torch.cat([kept, free], dim=-1).index_select(-1, self.unsplit)

    def _forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``(y, s)``: the output and the log-scales of the free coordinates."""
        kept, free = self._split(x)
        s, t = self._scale_shift(kept, context)
        return self._merge(kept, self._move(free, s, t, +1)), s

    def _backward(
        self, y: Tensor, context: Tensor | None = None, detach: bool = False
    ) -> tuple[Tensor, Tensor]:
        """``(x, s)``: kept coordinates of ``y`` equal those of ``x``, so ``s`` is the same."""
        kept, free = self._split(y)
        s, t = self._scale_shift(kept, context, detach)
        return self._merge(kept, self._move(free, s, t, -1)), s

    def _forward_pass(self, x: Tensor) -> tuple[Tensor, Tensor]:
        self._check_event(x, self.mask.shape[-1], self.factor.dtype)
        y, s = self._forward(x)
        return y, s.sum(-1)

    def _backward_pass(self, y: Tensor) -> tuple[Tensor, Tensor]:
        self._check_event(y, self.mask.shape[-1], self.factor.dtype)
        x, s = self._backward(y)
        return x, s.sum(-1)


def _rederive_after_load(module: MaskedAffineCoupling, incompatible_keys) -> None:
    module._derive_buffers(module.factor.dtype)

"""The log-determinant from the same pass as the output, kept for the call that follows."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.distributions import constraints

__all__ = ["OnePassLogDet"]


#: The method that converts a tensor or a module to a dtype, where there is one.
_CONVERTERS = {torch.float16: "half", torch.bfloat16: "bfloat16", torch.float32: "float",
               torch.float64: "double"}  # fmt: skip


def _check_dtype(owner: str, what: str, var: str, x: Tensor, dtype: torch.dtype) -> None:
    """Refuse ``x`` (an ``"input"`` or a ``"context"``, ``var`` in the fix) of a dtype other
    than the parameters' ``dtype``, naming both and the fix; a floating one passes under
    autocast (the products cast it). Dtypes only: no device sync.

    Example:
        >>> _check_dtype("RealNVP", "input", "x", torch.zeros(2, dtype=torch.float64),
        ...              torch.float32)
        Traceback (most recent call last):
        ...
        TypeError: RealNVP got an input of dtype float64, but its parameters are float32: convert the input with x.float(), or the flow with flow.double()
    """  # noqa: E501
    if x.dtype == dtype or (x.is_floating_point() and torch.is_autocast_enabled(x.device.type)):
        return
    want, have = str(dtype).removeprefix("torch."), str(x.dtype).removeprefix("torch.")
    to_want = f"{var}.{_CONVERTERS[dtype]}()" if dtype in _CONVERTERS else f"{var}.to({dtype})"
    if not x.is_floating_point():
        raise TypeError(
            f"{owner} expects a floating-point {what} of dtype {want} (its parameters' dtype), "
            f"got {have}: convert it with {to_want}"
        )
    to_have = f"flow.{_CONVERTERS[x.dtype]}()" if x.dtype in _CONVERTERS else f"flow.to({x.dtype})"
    article = "an" if what[0] in "aeiou" else "a"
    raise TypeError(
        f"{owner} got {article} {what} of dtype {have}, but its parameters are {want}: convert "
        f"the {what} with {to_want}, or the flow with {to_have}"
    )


class OnePassLogDet:
    """Mixin for a bijection of real vectors whose forward and inverse passes also give
    the log-det (a coupling, a flow of them, a conditioned flow).

    Pyro scores a draw by calling the transform and then ``log_abs_det_jacobian(x, y)``
    on the same tensors; a coupling computes ``s`` on the way, so keeping the sum saves
    a second pass through every conditioner. Only the exact ``(x, y)`` pair of the last
    call (Pyro's one-slot cache) is answered from memory; anything else is recomputed.
    Subclasses define :meth:`_forward_pass` and :meth:`_backward_pass`, each returning
    ``(output, log|det dy/dx|)`` with the log-det of the forward map.

    Example:
        >>> import torch
        >>> from torch.distributions.transforms import Transform
        >>> class Double(OnePassLogDet, Transform):
        ...     bijective = True
        ...     def _forward_pass(self, x):
        ...         return 2 * x, torch.full(x.shape[:-1], x.shape[-1] * 0.6931)
        ...     def _backward_pass(self, y):
        ...         return y / 2, torch.full(y.shape[:-1], y.shape[-1] * 0.6931)
        >>> double = Double(cache_size=1)
        >>> x = torch.ones(2, 3)
        >>> y = double(x)
        >>> double.log_abs_det_jacobian(x, y)  # kept from the call, not recomputed
        tensor([2.0793, 2.0793])
    """

    domain = constraints.real_vector
    codomain = constraints.real_vector
    bijective = True
    sign = +1

    #: ``(x, y, log|det|)`` of the last pass. Kept here rather than read from torch's
    #: private ``_cached_x_y``: it holds the same pair, as both are set by the same call.
    _last_pass: tuple[Tensor, Tensor, Tensor] | None = None

    def _check_event(self, x: Tensor, size: int, dtype: torch.dtype | None = None) -> None:
        """Refuse an input that is no tensor, whose last dimension is not ``size``, or (given
        the ``dtype`` of the parameters) of another dtype: static tests of type, shape and
        dtype, no device sync, where a wrong input would otherwise fail deep in
        ``index_select`` or a matrix product."""
        name = type(self).__name__
        if not isinstance(x, Tensor):
            like = "" if dtype is None else f", dtype={dtype}"
            raise TypeError(
                f"{name} expects a torch.Tensor, got {type(x).__module__}.{type(x).__name__}: "
                f"convert it with torch.as_tensor(x{like})"
            )
        if not torch.jit.is_tracing() and x.shape[-1:] != (size,):
            raise ValueError(f"{name} expects inputs of shape (..., {size}), got {tuple(x.shape)}")
        if dtype is not None and x.dtype != dtype:
            _check_dtype(name, "input", "x", x, dtype)

    def _forward_pass(self, x: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def _backward_pass(self, y: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def _call(self, x: Tensor) -> Tensor:
        y, log_det = self._forward_pass(x)
        self._last_pass = (x, y, log_det)
        return y

    def _inverse(self, y: Tensor) -> Tensor:
        x, log_det = self._backward_pass(y)
        self._last_pass = (x, y, log_det)
        return x

    def __getstate__(self) -> dict:
        # The cache holds the last call's tensors: stale in a copy, and deepcopy refuses
        # them when they are non-leaf (after any call with gradients).
        state = dict(super().__getstate__())
        if "_cached_x_y" in state:
            state["_cached_x_y"] = (None, None)
        state.pop("_last_pass", None)
        return state

    def log_abs_det_jacobian(self, x: Tensor, y: Tensor) -> Tensor:
        if self._last_pass is not None:
            x_old, y_old, log_det = self._last_pass
            if x is x_old and y is y_old:
                return log_det
        return self._forward_pass(x)[1]

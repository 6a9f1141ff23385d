"""Parameters that share one buffer while training, so the optimizer's work is one tensor's."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

__all__ = ["FlatParameters"]


class FlatParameters:
    """Leaf parameters made views of one flat leaf ``flat``, their gradients views of
    ``flat.grad``, between :meth:`bind` and :meth:`release`.

    An optimizer over ``[flat]`` then zeroes, clips and steps one tensor where it would
    loop over dozens: AutoRealNVP's six couplings hold 39 small tensors, and on a CPU
    those loops (zeroing, the total norm, fused Adam) cost as much as a coupling's pass.
    The arithmetic is elementwise, so the updates are those of the separate tensors.
    Autograd accumulates into a gradient that already exists, in place, which is what
    keeps the views filled. :meth:`release` gives every parameter its own storage again
    (the values it has then) and the optimizer's state, kept on ``flat``, survives a
    later :meth:`bind`.

    Example:
        >>> a, b = torch.ones(2, requires_grad=True), torch.zeros(3, requires_grad=True)
        >>> flat = FlatParameters([a, b])
        >>> flat.bind()
        >>> (2 * a.sum() + b.sum()).backward()
        >>> flat.flat.grad
        tensor([2., 2., 1., 1., 1.])
        >>> flat.release()
        >>> a.grad is None, a.data_ptr() != flat.flat.data_ptr()
        (True, True)
    """

    def __init__(self, params: Iterable[Tensor]) -> None:
        self.params = list(params)
        if not self.params:
            raise ValueError("FlatParameters needs at least one parameter")
        first = self.params[0]
        for param in self.params:
            if not (param.is_leaf and param.requires_grad):
                raise ValueError("FlatParameters takes leaf tensors that require grad")
            if (param.dtype, param.device) != (first.dtype, first.device):
                raise ValueError(
                    "FlatParameters needs one dtype and device, got "
                    f"{first.dtype} on {first.device} and {param.dtype} on {param.device}"
                )
        size = sum(param.numel() for param in self.params)
        self.flat = torch.zeros(size, dtype=first.dtype, device=first.device, requires_grad=True)
        self.bound = False

    def _slices(self):
        offset = 0
        for param in self.params:
            yield param, slice(offset, offset + param.numel())
            offset += param.numel()

    def bind(self) -> None:
        """Copy the parameters' values into ``flat`` and make them its views."""
        if self.bound:
            return
        grad = torch.zeros_like(self.flat)
        with torch.no_grad():
            for param, part in self._slices():
                self.flat[part] = param.reshape(-1)
        self._grads = []
        for param, part in self._slices():
            param.data = self.flat.data[part].view_as(param)
            param.grad = grad[part].view_as(param)
            self._grads.append(param.grad)
        self.flat.grad = grad
        self._pointers = [param.data_ptr() for param in self.params]
        self.bound = True

    def intact(self) -> bool:
        """Whether every parameter and gradient is still its view: ``param.grad = None``
        (``module.zero_grad()``) or ``param.data = ...`` elsewhere would leave the buffer
        stale. Identity and address checks only, no device synchronisation."""
        return all(
            param.grad is grad and param.data_ptr() == pointer
            for param, grad, pointer in zip(self.params, self._grads, self._pointers, strict=True)
        )

    def release(self) -> None:
        """Give each parameter its own storage again, with no gradient."""
        for param in self.params:
            if self.bound and param.untyped_storage().data_ptr() == self._storage():
                param.data = param.data.clone()
            param.grad = None
        self.flat.grad = None
        self.bound = False

    def _storage(self) -> int:
        return self.flat.untyped_storage().data_ptr()

    def zero_grad(self) -> None:
        """Zero the gradients in place (setting them to ``None`` would unbind them); bind
        again first, from the parameters' values, if something else unbound them."""
        if not self.intact():
            self.release()
            self.bind()
        self.flat.grad.zero_()

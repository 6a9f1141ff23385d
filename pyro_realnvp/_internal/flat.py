"""Parameters that share one buffer, so an optimizer's work is one tensor's: the fast path's
while it trains, and the guide's flow as Pyro sees it (one ``param`` statement, one Adam)."""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Iterator
from functools import partial

import torch
from torch import Tensor
from torch.utils.hooks import unserializable_hook

__all__ = ["FlatParameters", "unpacked"]


class FlatParameters:
    """Leaf parameters made views of one flat leaf ``flat``, their gradients views of
    ``flat.grad``, between :meth:`bind` and :meth:`release`.

    An optimizer over ``[flat]`` then zeroes, clips and steps one tensor where it would
    loop over dozens: AutoRealNVP's six couplings hold 39 small tensors, and on a CPU
    those loops (zeroing, the total norm, fused Adam) cost as much as a coupling's pass.
    The arithmetic is elementwise, so the updates are those of the separate tensors.
    Autograd accumulates into a gradient that already exists, in place, which is what
    keeps the views filled. :meth:`release` gives every parameter back the storage it had
    (with the values it has then) and the optimizer's state, kept on ``flat``, survives a
    later :meth:`bind`. Where others replace gradients (Pyro's ``zero_grads`` sets a new
    ``flat.grad``; ``module.zero_grad()`` clears the parameters'), :meth:`sync_grads`
    makes them views again.

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

    def __init__(
        self, params: Iterable[Tensor], flat: Tensor | None = None, *, give_back: bool = True
    ) -> None:
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
        #: The parameters' shapes, read once: a JIT trace records every read of one.
        self.shapes = [param.shape for param in self.params]
        size = sum(param.numel() for param in self.params)
        if flat is None:
            flat = torch.zeros(size, dtype=first.dtype, device=first.device, requires_grad=True)
        elif flat.shape != (size,) or not (flat.is_leaf and flat.requires_grad):
            raise ValueError(
                f"FlatParameters needs a flat leaf of shape ({size},) that requires grad, "
                f"got shape {tuple(flat.shape)}"
            )
        self.flat = flat
        self.give_back = give_back
        self.bound = False
        self._hooks: list = []
        self._mirror_hooks: list = []
        self._buffer: Tensor | None = None
        #: Each parameter's view of the buffer, what its gradient is meant to be (the
        #: view, or a mirror: see _mirror), and the buffer generation it was synced at.
        self._views: list[Tensor | None] = [None] * len(self.params)
        self._grads: list[Tensor | None] = [None] * len(self.params)
        self._seen = [0] * len(self.params)
        self._generation = 0

    def holds(self, params: Iterable[Tensor]) -> bool:
        """Whether these are the parameters it binds, still of ``flat``'s dtype and device."""
        params = list(params)
        return len(params) == len(self.params) and all(
            new is old and (new.dtype, new.device) == (self.flat.dtype, self.flat.device)
            for new, old in zip(params, self.params, strict=True)
        )

    def _slices(self):
        offset = 0
        for param in self.params:
            yield param, slice(offset, offset + param.numel())
            offset += param.numel()

    def bind(self, from_params: bool = True, grads: bool = True) -> None:
        """Copy the parameters' values into ``flat`` (or, not ``from_params``, give them
        ``flat``'s) and make them its views; with ``grads``, each gradient a view of
        ``flat.grad`` (:meth:`sync_grads`)."""
        if self.bound:
            return
        if from_params:
            with torch.no_grad():
                for param, part in self._slices():
                    self.flat[part] = param.reshape(-1)
        self._originals = [param.data for param in self.params] if self.give_back else None
        for param, part in self._slices():
            param.data = self.flat.data[part].view_as(param)
        self._pointers = [_address(param) for param in self.params]
        self.bound = True
        if grads:
            self.sync_grads()

    def _sync_buffer(self) -> None:
        """Make ``flat.grad`` the buffer the views read: a replaced one (Pyro's
        ``zero_grads`` sets a new one at every step) is copied into it, one copy rather
        than dozens of new views; a cleared one reads as zero."""
        own, given = self._buffer, self.flat.grad
        if own is None:  # the first since bind: the buffer is flat's gradient, or zeros
            own = given if given is not None else torch.zeros_like(self.flat)
            self._views = [own[part].view_as(param) for param, part in self._slices()]
        elif given is None:
            own.zero_()
        elif given is not own:
            own.copy_(given)
        else:
            return
        self.flat.grad = self._buffer = own
        self._generation += 1  # mirrors of the buffer before (see _mirror) are stale

    def _sync_one(self, index: int, point: bool = True) -> None:
        """Parameter ``index``'s gradient made its view of the buffer: a current mirror
        stays, another tensor's values are kept; ``None`` reads as zero, and stays
        ``None`` unless ``point`` (a backward pass may not reach it: ``autograd.grad``
        runs the hooks too, and must leave ``.grad`` alone)."""
        param, view = self.params[index], self._views[index]
        held = param.grad
        if held is view:
            return
        mirror = held is self._grads[index] and self._seen[index] == self._generation
        if held is None:
            view.zero_()
            if not point:
                return
        elif mirror:
            return
        elif held is not self._grads[index]:  # a gradient of its own: keep its values
            view.copy_(held)
        param.grad = self._grads[index] = view
        self._seen[index] = self._generation

    def sync_grads(self) -> None:
        """Make every gradient a view of ``flat.grad`` (:meth:`_sync_buffer`,
        :meth:`_sync_one`). Identity checks only, no device synchronisation."""
        self._sync_buffer()
        for index in range(len(self.params)):
            self._sync_one(index)

    def track_grads(self) -> None:
        """From now on, sync each parameter's gradient as a backward pass reaches it: before
        it accumulates, whatever replaced or cleared ``flat.grad`` or its gradient since
        (Pyro's ``zero_grads``, an optimizer's ``zero_grad`` between the loss and its
        backward pass) is accounted for, so its gradient, accumulated in place, fills
        ``flat.grad``; one the pass does not reach keeps its ``None``. After it
        accumulates into a new tensor (from ``None``, or with ``create_graph=True``),
        that tensor is mirrored into ``flat.grad``. Idle while another binding holds
        the parameters (the fast path's). :meth:`untrack` stops it."""
        if self._hooks:
            return
        ref = weakref.ref(self)

        def hooks(index: int, param: Tensor) -> list:
            @unserializable_hook
            def before_accumulating(grad: Tensor) -> None:
                packing = ref()
                if packing is not None:
                    packing._sync_if_stale(index)

            return [param.register_hook(before_accumulating),
                    param.register_post_accumulate_grad_hook(
                        partial(_mirror_if_stale, ref, index))]  # fmt: skip

        self._hooks = [hook for i, p in enumerate(self.params) for hook in hooks(i, p)]

    def watch(self, tensor: Tensor) -> None:
        """Sync the gradients once, as a backward pass reaches ``tensor``, rather than at
        each parameter (:meth:`track_grads`' two Python hooks per tensor cost as much as a
        coupling's pass in Pyro's one-particle loop). For a ``tensor`` through which alone
        the parameters reach the loss (a draw whose log-density is a function of it), so
        that its hook runs before any of them accumulates; only for passes through it.
        Where a gradient would accumulate out of place (``None``, or ``create_graph``),
        that pass mirrors it as :meth:`track_grads` does."""
        if not tensor.requires_grad or self._hooks:
            return
        ref = weakref.ref(self)

        @unserializable_hook
        def before_backward(grad: Tensor) -> None:
            packing = ref()
            if packing is not None:
                packing._before_backward()

        tensor.register_hook(before_backward)

    def _before_backward(self) -> None:
        """:meth:`watch`'s hook: every parameter bound here made its gradient's view; those
        that will accumulate out of place mirrored after this pass."""
        out_of_place = torch.is_grad_enabled()  # create_graph: torch adds out of place
        if not (out_of_place or self._mirror_hooks) and self._views_held():
            self._sync_buffer()  # flat.grad replaced (Pyro's zero_grads): one copy
            return
        for hook in self._mirror_hooks:
            hook.remove()
        self._mirror_hooks = []
        ref = weakref.ref(self)
        for index, param in enumerate(self.params):
            if not (self._sync_if_stale(index) or out_of_place and self._bound_here(index)):
                continue
            if out_of_place or param.grad is None:
                self._mirror_hooks.append(param.register_post_accumulate_grad_hook(
                    partial(_mirror_if_stale, ref, index)))  # fmt: skip

    def _sync_if_stale(self, index: int) -> bool:
        """Before parameter ``index`` accumulates: where :meth:`_stale`, the buffer and its
        gradient synced (a ``None`` one stays ``None``, to be mirrored after); whether so."""
        if not self._stale(index):
            return False
        self._sync_buffer()
        self._sync_one(index, point=False)
        return True

    def _mirror(self, index: int) -> None:
        """Copy a gradient accumulated out of place (or a first one, where it was
        ``None``) into the buffer, and remember it as current until the buffer is
        replaced."""
        param, view = self.params[index], self._views[index]
        held = param.grad
        view.copy_(held.detach())
        if not held.requires_grad:  # no graph to keep (create_graph=False): the view
            param.grad = held = view
        self._grads[index], self._seen[index] = held, self._generation

    def _stale(self, index: int) -> bool:
        """Whether parameter ``index``, bound here (not by another binding), is about to
        accumulate, or has, where ``flat.grad`` does not see it: O(1), as it runs for each
        one."""
        param, own = self.params[index], self._buffer
        if own is not None and self.flat.grad is own and param.grad is self._views[index]:
            return False  # in step: identities first, the storage's address only if not
        return self._bound_here(index)

    def _views_held(self) -> bool:
        """Whether every gradient is its view of the buffer, so accumulates into it once
        ``flat.grad`` is the buffer; identities only."""
        return self._buffer is not None and all(
            p.grad is v for p, v in zip(self.params, self._views, strict=True)
        )

    def _bound_here(self, index: int) -> bool:
        return self.bound and _address(self.params[index]) == self._pointers[index]

    def tracking(self) -> bool:
        """Whether :meth:`track_grads`' hooks are on."""
        return bool(self._hooks)

    def untrack(self, grads: bool = True) -> None:
        """Remove :meth:`track_grads`' hooks (and :meth:`watch`'s mirrors) and, with
        ``grads``, the gradients it pointed at ``flat``."""
        for hook in self._hooks + self._mirror_hooks:
            hook.remove()
        self._hooks, self._mirror_hooks = [], []
        if not grads:
            return
        for param, view in zip(self.params, self._grads, strict=True):
            if view is not None and param.grad is view:
                param.grad = None

    def _data_intact(self) -> bool:
        return all(
            _address(param) == pointer
            for param, pointer in zip(self.params, self._pointers, strict=True)
        )

    def refresh(self, grads: bool = True) -> None:
        """Bind again, from the values they have, where parameters moved elsewhere
        (``param.data = ...``, ``module.to(...)``, another binding); then, with ``grads``,
        :meth:`sync_grads`. Address checks only, no device synchronisation."""
        if self.bound and not self._data_intact():
            self.release()
        self.bind(grads=False)
        if grads:
            self.sync_grads()

    def intact(self) -> bool:
        """Whether every parameter and gradient is still its view: ``param.grad = None``
        (``module.zero_grad()``) or ``param.data = ...`` elsewhere would leave the buffer
        stale. Identity and address checks only, no device synchronisation."""
        return all(
            param.grad is grad and _address(param) == pointer
            for param, grad, pointer in zip(self.params, self._grads, self._pointers, strict=True)
        )

    def release(self) -> None:
        """Give each parameter back the storage it had before :meth:`bind` (or its own, where
        that no longer fits), with the values it has now, and no gradient."""
        originals = self.__dict__.get("_originals") or [None] * len(self.params)
        for param, original in zip(self.params, originals, strict=True):
            if self.bound and param.untyped_storage().data_ptr() == self._storage():
                if _fits(original, param, self._storage()):
                    original.copy_(param.data)
                    param.data = original
                else:
                    param.data = param.data.clone()
            param.grad = None
        self.flat.grad = None
        self._originals, self._buffer = None, None
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


def _mirror_if_stale(ref: weakref.ref, index: int, param: Tensor) -> None:
    """After parameter ``index`` accumulates (:meth:`FlatParameters.track_grads`,
    :meth:`FlatParameters.watch`): a gradient made out of place, mirrored into the buffer."""
    packing = ref()
    if packing is not None and packing._stale(index):
        packing._mirror(index)


def _address(param: Tensor) -> tuple[int, int]:
    """Where ``param``'s values live: its storage and offset (``data_ptr`` is 0 for every
    empty tensor, wherever it lives)."""
    return param.untyped_storage().data_ptr(), param.storage_offset()


def _fits(original: Tensor | None, param: Tensor, storage: int) -> bool:
    """Whether ``param``'s values can go back into ``original``, outside ``storage``."""
    if original is None or original.untyped_storage().data_ptr() == storage:
        return False
    return (original.shape, original.dtype, original.device) == (param.shape, param.dtype,
                                                                 param.device)  # fmt: skip


def unpacked(tensors: Iterable[Tensor], params: Iterable[Tensor]) -> Iterator[Tensor]:
    """``tensors``, each that shares its storage with some of ``params`` (a flat tensor
    they are views of) replaced by those: what to train where nothing syncs the views.

    Example:
        >>> a, b = torch.ones(2, requires_grad=True), torch.zeros(3, requires_grad=True)
        >>> flat = FlatParameters([a, b])
        >>> flat.bind()
        >>> [tuple(t.shape) for t in unpacked([flat.flat], [a, b])]
        [(2,), (3,)]
    """
    params = list(params)
    storages = {id(p): p.untyped_storage().data_ptr() for p in params}
    for tensor in tensors:
        storage = tensor.untyped_storage().data_ptr()
        shared = [p for p in params if storages[id(p)] == storage and p is not tensor]
        yield from shared or [tensor]

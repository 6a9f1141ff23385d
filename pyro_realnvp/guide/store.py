"""The guide's side of Pyro's global param store: the flow's parameters declared to it,
stale entries refused, and states saved by older versions read."""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Callable, Iterator

import pyro
import torch
from pyro.distributions import constraints
from pyro.params.param_store import param_with_module_name
from pyro.poutine.runtime import effectful
from torch import Tensor, nn

from .._internal.flat import FlatParameters

__all__ = [
    "check_stored_shape",
    "check_stored_sites",
    "compact_copy",
    "declare_flow",
    "draw_watch",
    "flow_reading",
    "forget",
    "own_storage",
    "register_flow",
]


def declare_flow(
    flow: nn.Module, name: str, packed: FlatParameters | None, per_tensor: bool = True
) -> tuple[FlatParameters | None, Tensor | None]:
    """Declare ``flow``'s parameters to Pyro as one flat parameter ``name``, its tensors
    views of it (:class:`~pyro_realnvp._internal.flat.FlatParameters`): the packing to
    pass back at the next call, and the value Pyro's ``param`` statement gave.

    The flow keeps its own ``nn.Parameter``\\ s (``state_dict``, ``parameters()``, torch
    optimizers see them as always), but Pyro sees one tensor: one ``param`` statement and
    one Adam per step, where there would be dozens of each (docs/tuning.md). Where the
    store holds another tensor under ``name`` (loaded from disk, or a same-named copy's),
    the flow takes its values, as Pyro's ``PyroParam``\\ s do; entries per tensor, as
    stores saved before this held them (:func:`register_flow`), are taken and removed.
    Under ``module_local_params``, with mixed dtypes or a frozen parameter it falls back
    on :func:`register_flow` (and gives no value). The gradients sync as a backward pass
    reaches each parameter; not ``per_tensor``, only where the caller has the packing
    watch the draw every backward pass runs through (``FlatParameters.watch``).

    Example:
        >>> layer = nn.Linear(2, 1)
        >>> packed, value = declare_flow(layer, "guide.flow", None)
        >>> value is pyro.get_param_store()["guide.flow"], value.shape
        (True, torch.Size([3]))
        >>> layer.weight.data_ptr() == value.data_ptr()
        True
    """
    params = list(flow.parameters())
    kinds = {(p.dtype, p.device, p.requires_grad) for p in params}
    if pyro.settings.get("module_local_params") or len(kinds) != 1 or not kinds.pop()[2]:
        register_flow(flow, name)
        return packed, None
    _take_entries_per_tensor(flow, name)
    previous = None if packed is None else packed.flat
    if packed is None or not packed.holds(params):
        if packed is not None:  # a .to() or .double(): its gradients meant the old dtype
            packed.untrack()
        packed = _packing(params)
    packed.refresh(grads=False)  # its gradients sync at the backward pass (the hooks)
    store = pyro.get_param_store()
    if name in store and store[name] is not packed.flat:
        if store[name] is previous:  # ours, before a .to() or .double() made a new one
            del store[name]
        else:
            check_stored_shape(name, packed.flat)
            packed.untrack()
            packed.release()
            packed = _packing(params, store[name])
    if per_tensor:
        packed.track_grads()
    elif packed.tracking():
        packed.untrack(grads=False)
    return packed, pyro.param(name, packed.flat)  # the statement SVI collects params from


def draw_watch(packed: FlatParameters | None) -> Callable[[Tensor], None] | None:
    """What to call with each draw of a path-gradient posterior: the packing's
    :meth:`~pyro_realnvp._internal.flat.FlatParameters.watch`, so the flow's gradients
    sync as a backward pass reaches the draw, through which alone its parameters reach a
    loss. ``None`` under a JIT trace, where the flow reads the flat tensor itself.

    Example:
        >>> packed, _ = declare_flow(nn.Linear(2, 1), "guide.flow", None, per_tensor=False)
        >>> draw_watch(packed) == packed.watch, draw_watch(None)
        (True, None)
    """
    if packed is None or torch.jit.is_tracing():
        return None
    return packed.watch


def _packing(params: list[Tensor], flat: Tensor | None = None) -> FlatParameters:
    """The flow's parameters bound to ``flat`` (the store's, whose values they take) or a
    new one; :func:`declare_flow` says how their gradients sync."""
    packed = FlatParameters(params, flat, give_back=False)
    packed.bind(from_params=flat is None, grads=False)
    return packed


@contextlib.contextmanager
def flow_reading(flow: nn.Module, flat: Tensor, shapes: list[torch.Size]) -> Iterator[None]:
    """Within, ``flow``'s parameters are views of ``flat`` (of ``shapes``, in
    ``flow.parameters()``'s order), so a JIT trace records the flow as a function of the
    one tensor that Pyro's compiled ELBO passes in, not of its parameters as constants
    (whose very shapes it must not read).

    Example:
        >>> layer = nn.Linear(1, 1)
        >>> flat = torch.tensor([2.0, 1.0], requires_grad=True)
        >>> with flow_reading(layer, flat, [(1, 1), (1,)]):
        ...     layer(torch.ones(1)).backward()
        >>> flat.grad, layer.weight.grad is None
        (tensor([1., 1.]), True)
    """
    saved = []
    views = flat.split([math.prod(shape) for shape in shapes])
    for (full_name, param), view, shape in zip(
        flow.named_parameters(), views, shapes, strict=True
    ):
        module_name, _, leaf = full_name.rpartition(".")
        module = flow.get_submodule(module_name)
        saved.append((module, leaf, param))
        module._parameters[leaf] = view.view(shape)
    try:
        yield
    finally:
        for module, leaf, param in saved:
            module._parameters[leaf] = param


def own_storage(module: nn.Module, state_dict: dict, prefix: str, local_metadata) -> None:
    """A ``state_dict`` post-hook: the flow's entries, views of the one tensor Pyro sees,
    get storage of their own, so that ``pickle`` writes each once (``torch.save`` shares
    a storage among its views; ``pickle`` writes it whole with each).

    Example:
        >>> flow = nn.Linear(2, 1)
        >>> flow.weight.data = torch.zeros(10)[:2].view(1, 2)
        >>> state = {"flow.weight": flow.weight.detach()}
        >>> own_storage(None, state, "", {})
        >>> state["flow.weight"].untyped_storage().nbytes()
        8
    """
    for key, value in state_dict.items():
        if (key.startswith(prefix + "flow.") and not isinstance(value, nn.Parameter)
                and value.untyped_storage().nbytes() > value.nbytes):  # fmt: skip
            state_dict[key] = value.clone()


def compact_copy(flow: nn.Module) -> nn.Module:
    """A deep copy of ``flow`` whose parameters each own their storage (see
    :func:`own_storage`), for pickling.

    Example:
        >>> layer = nn.Linear(2, 1)
        >>> layer.weight.data = torch.zeros(10)[:2].view(1, 2)
        >>> compact_copy(layer).weight.untyped_storage().nbytes()
        8
    """
    copied = copy.deepcopy(flow)
    for param in copied.parameters():
        param.data = param.data.clone()
    return copied


def _take_entries_per_tensor(flow: nn.Module, prefix: str) -> None:
    """Give ``flow`` the values the store holds per tensor under ``prefix`` (a store saved
    before the flow was declared as one tensor), and remove those entries."""
    store = pyro.get_param_store()
    # Such a store holds every trainable tensor, the first among them: one lookup per
    # call rather than a scan of the store.
    first = next(iter(flow.named_parameters()), None)
    if first is None or param_with_module_name(prefix, first[0]) not in store:
        return
    with torch.no_grad():
        for leaf, param in flow.named_parameters():
            full_name = param_with_module_name(prefix, leaf)
            if full_name in store:
                check_stored_shape(full_name, param)
                param.copy_(store[full_name])
                del store[full_name]


def register_flow(flow: nn.Module, prefix: str) -> None:
    """Declare ``flow``'s parameters to Pyro under ``prefix``, as ``pyro.module(...,
    update_module_params=True)`` does, with two differences that make the flow behave
    like a guide's ``PyroParam``\\ s: a parameter frozen by ``requires_grad_(False)`` and
    not in the store is skipped without a warning (``pyro.module`` warns at every call),
    and where the store holds another tensor under the name (a store loaded from disk,
    or the original of a same-named deep copy) the flow takes it. Under Pyro's
    ``module_local_params`` each parameter is a ``param`` statement for handlers only.

    Example:
        >>> layer = nn.Linear(2, 1)
        >>> register_flow(layer, "guide.flow")
        >>> pyro.get_param_store()["guide.flow$$$weight"] is layer.weight
        True
    """
    if pyro.settings.get("module_local_params"):
        for name, param in flow.named_parameters():
            full_name = param_with_module_name(prefix, name)
            effectful(type="param")(lambda *_, _p=param, **__: _p)(
                full_name, param, constraint=constraints.real, name=full_name
            )
        return
    store = pyro.get_param_store()
    for module_name, module in flow.named_modules():
        for leaf, param in list(module._parameters.items()):
            full_name = param_with_module_name(prefix, f"{module_name}.{leaf}".lstrip("."))
            if param is None or (full_name not in store and not param.requires_grad):
                continue  # frozen and never stored: nothing to train or to load
            check_stored_shape(full_name, param)
            pyro.param(full_name, param)  # the statement SVI collects parameters from
            stored = store[full_name]
            if stored is not param:
                module._parameters[leaf] = stored


def check_stored_shape(full_name: str, param: Tensor) -> None:
    """Refuse a stored parameter of another shape under ``full_name``, saying what to do.

    Example:
        >>> _ = pyro.param("w", torch.zeros(3))
        >>> check_stored_shape("w", torch.zeros(2))
        Traceback (most recent call last):
        ...
        ValueError: the param store holds 'w' with shape (3,), but this model needs (2,): call pyro.clear_param_store() or give this guide's model a different latent layout
    """  # noqa: E501
    store = pyro.get_param_store()
    if torch.jit.is_tracing():  # shapes are fixed by then; comparing them would warn
        return
    if full_name in store and store[full_name].shape != param.shape:
        raise ValueError(
            f"the param store holds '{full_name}' with shape "
            f"{tuple(store[full_name].shape)}, but this model needs "
            f"{tuple(param.shape)}: call pyro.clear_param_store() or give this "
            "guide's model a different latent layout"
        )


def check_stored_sites(stored: object | None, sites: tuple, name: str) -> None:
    """Refuse a location ``name`` the param store holds for other latent ``sites``: two
    guides of different models under one name would train one set of parameters, each
    moving the other's, without a word.

    Example:
        >>> from pyro_realnvp.guide.units import StartUnits
        >>> stored = StartUnits(torch.zeros(1), torch.ones(1), sites=(("x", ()),))
        >>> check_stored_sites(stored, (("y", ()),), "AutoRealNVP.loc")
        Traceback (most recent call last):
        ...
        ValueError: the param store holds 'AutoRealNVP.loc' of a guide set up for latent sites ['x'], but this guide's model has ['y'], and the two would train one set of parameters: call pyro.clear_param_store() before building this guide, put both guides in a PyroModule (an AutoGuideList) so that their names differ, or use pyro.settings.set(module_local_params=True)
    """  # noqa: E501
    held = getattr(stored, "sites", None)
    if held is None or tuple(held) == tuple(sites):
        return
    names = [[site for site, _ in each] for each in (held, sites)]
    shapes = ["" if names[0] != names[1] else f" of shapes {[tuple(s) for _, s in each]}"
              for each in (held, sites)]  # fmt: skip
    raise ValueError(
        f"the param store holds '{name}' of a guide set up for latent sites "
        f"{names[0]}{shapes[0]}, but this guide's model has {names[1]}{shapes[1]}, and "
        "the two would train one set of parameters: "
        "call pyro.clear_param_store() before building this guide, put both guides in a "
        "PyroModule (an AutoGuideList) so that their names differ, or use "
        "pyro.settings.set(module_local_params=True)"
    )


def forget(prefix: str) -> None:
    """Delete every entry of the param store whose name starts with ``prefix``.

    Example:
        >>> _ = pyro.param("guide.loc", torch.zeros(1))
        >>> forget("guide.")
        >>> "guide.loc" in pyro.get_param_store()
        False
    """
    store = pyro.get_param_store()
    for name in [name for name in store.keys() if name.startswith(prefix)]:
        del store[name]


def raw_loc_of_older_states(module, state_dict, prefix, *args) -> None:
    """A ``load_state_dict`` pre-hook: a guide not yet set up has no parameters to load
    into, which torch reports as unexpected keys; and a state saved before the location
    was trained in the start's units holds the raw location as its unconstrained value,
    so read it in units of 1 about 0. A state whose sizes differ from the guide's is
    refused before anything is copied."""
    raw = state_dict.get(prefix + "loc_unconstrained")
    if raw is not None and getattr(module, "prototype_trace", None) is None:
        raise RuntimeError(
            "this guide is not set up yet, so it has no parameters to load the state into: "
            "call it once first, guide(*args, **kwargs) with the model's arguments (or "
            "guide.median(*args, **kwargs)), then load_state_dict"
        )
    if raw is not None and prefix + "start_loc" not in state_dict:
        state_dict[prefix + "start_loc"] = torch.zeros_like(raw)
        state_dict[prefix + "start_scale"] = torch.ones_like(raw)
    _refuse_mismatched_sizes(module, state_dict, prefix)


def _refuse_mismatched_sizes(module, state_dict: dict, prefix: str) -> None:
    """Refuse, before torch copies any entry, a state whose sizes differ from the guide's
    (torch copies those that match, then raises for the rest: a half-loaded guide)."""
    own = module.state_dict()
    for key, value in state_dict.items():
        name = key[len(prefix) :]
        if name in own and torch.is_tensor(value) and value.shape != own[name].shape:
            raise RuntimeError(
                f"size mismatch for {name}: the state holds shape {tuple(value.shape)}, "
                f"this guide {tuple(own[name].shape)}; nothing was loaded (a state of a "
                "guide of another model, or of other options such as num_layers?)"
            )

"""Every call into a private Pyro or torch name, in one place, each pinned by a test.

"Private" means a leading underscore or a module that neither library documents
(``pyro.util``, ``pyro.infer.autoguide.guides``, ``torch.fx.experimental``). Each helper
here is the package's only caller of its name, and ``tests/_internal/test_compat.py``
pins what the package relies on, so an upgrade that changes it fails a test named after
it.

Not wrapped, because they are a subclass's contract rather than calls (pinned all the
same): ``AutoContinuous._setup_prototype``, ``_prototype_hide_fn``, ``_init_loc``,
``_unconstrained_shapes``, ``PyroModule._pyro_params``, ``_pyro_get_fullname`` and
``Distribution._get_checked_instance``, which :class:`~pyro_realnvp.AutoRealNVP` and its
posterior override or read as Pyro's and torch's own subclasses do.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import pyro
import torch
from pyro.infer.autoguide import AutoContinuous
from pyro.infer.autoguide.guides import prototype_hide_fn as _prototype_hide_fn
from pyro.infer.elbo import ELBO
from pyro.poutine.subsample_messenger import SubsampleMessenger
from pyro.util import check_site_shape as _check_site_shape
from pyro.util import get_rng_state, set_rng_state
from torch import Tensor

__all__ = [
    "capture_graph",
    "check_site_shape",
    "count_elements",
    "elbo_traces",
    "full_data_plates",
    "is_deterministic_site",
    "prototype_hide_fn",
    "rng_state",
    "stored_constraint",
    "unpack_latent",
]


@contextlib.contextmanager
def full_data_plates() -> Iterator[None]:
    """Inside, every subsampling ``pyro.plate`` yields all its indices, with scale 1.

    Pyro has no public switch for this: conditioning the plate's index site on the full
    range fails its ``subsample_size`` check. So the one helper that draws the indices,
    ``SubsampleMessenger._subsample``, is swapped for the length of the block. Plates
    built inside see ``subsample_size == size``, return ``torch.arange(size)`` and scale
    their sites by 1, so the model reads its whole data set.

    Example:
        >>> import pyro
        >>> with full_data_plates(), pyro.plate("data", 100, subsample_size=10) as idx:
        ...     len(idx)
        100
    """
    original = SubsampleMessenger._subsample

    def whole_range(name, size=None, subsample_size=None, subsample=None, *args, **kwargs):
        if size is None or subsample is not None:
            return original(name, size, subsample_size, subsample, *args, **kwargs)
        return original(name, size, size, None, *args, **kwargs)

    SubsampleMessenger._subsample = staticmethod(whole_range)
    try:
        yield
    finally:
        SubsampleMessenger._subsample = staticmethod(original)


def unpack_latent(guide: AutoContinuous, latent: Tensor) -> Iterator[tuple[dict, Tensor]]:
    """``(site, unconstrained value)`` per latent site of a packed ``latent``, in order.

    :math:`u = (u_1, \\dots, u_K) \\mapsto u_k` reshaped to site ``k``'s unconstrained
    shape; batch dimensions left of the last are kept. ``AutoContinuous._unpack_latent``.

    Example:
        >>> import pyro, pyro.distributions as dist
        >>> from pyro.infer.autoguide import AutoDiagonalNormal
        >>> guide = AutoDiagonalNormal(lambda: pyro.sample("x", dist.Normal(0, 1).expand([2])))
        >>> _ = guide()
        >>> [(site["name"], tuple(u.shape)) for site, u in unpack_latent(guide, torch.ones(2))]
        [('x', (2,))]
    """
    return guide._unpack_latent(latent)


def is_deterministic_site(site: dict) -> bool:
    """Whether a trace site was recorded by ``pyro.deterministic``, not ``pyro.sample``.

    Pyro marks them with the private ``infer`` key ``"_deterministic"``.

    Example:
        >>> import pyro
        >>> trace = pyro.poutine.trace(lambda: pyro.deterministic("d", torch.ones(1))).get_trace()
        >>> is_deterministic_site(trace.nodes["d"])
        True
    """
    return bool(site.get("infer", {}).get("_deterministic", False))


def elbo_traces(elbo: ELBO, model: Callable, guide: Callable, args: tuple, kwargs: dict):
    """``(model_trace, guide_trace)`` of one particle, as ``elbo`` itself records them.

    For an ELBO that wraps another: Pyro's ``ELBO._get_traces`` calls ``self._get_trace``,
    the private hook this forwards to.

    Example:
        >>> import pyro, pyro.distributions as dist
        >>> model = lambda: pyro.sample("x", dist.Normal(0.0, 1.0))
        >>> guide = lambda: pyro.sample("x", dist.Normal(0.0, 2.0))
        >>> model_trace, guide_trace = elbo_traces(pyro.infer.Trace_ELBO(), model, guide, (), {})
        >>> model_trace.nodes["x"]["value"] is guide_trace.nodes["x"]["value"]
        True
    """
    return elbo._get_trace(model, guide, args, kwargs)


@contextlib.contextmanager
def rng_state() -> Iterator[None]:
    """Leave torch's, Python's and NumPy's global random states as they were on entry.

    ``pyro.util.get_rng_state`` and ``set_rng_state`` (an undocumented module).

    Example:
        >>> with rng_state():
        ...     first = torch.rand(1)
        >>> bool(torch.rand(1) == first)
        True
    """
    state = get_rng_state()
    try:
        yield
    finally:
        set_rng_state(state)


def check_site_shape(site: dict, max_plate_nesting: int) -> None:
    """Raise ``ValueError`` if a site's ``log_prob`` shape disagrees with its plates.

    ``pyro.util.check_site_shape`` (an undocumented module), as ``Trace_ELBO`` checks.

    Example:
        >>> import pyro, pyro.distributions as dist
        >>> def model():
        ...     with pyro.plate("p", 3):
        ...         pyro.sample("x", dist.Normal(torch.zeros(3), 1.0))
        >>> trace = pyro.poutine.trace(model).get_trace()
        >>> trace.compute_log_prob()
        >>> check_site_shape(trace.nodes["x"], max_plate_nesting=1)
    """
    _check_site_shape(site, max_plate_nesting)


def prototype_hide_fn(msg: dict) -> bool:
    """Whether an autoguide's prototype trace leaves a message out (params, observations).

    ``pyro.infer.autoguide.guides.prototype_hide_fn`` (not exported by Pyro).

    Example:
        >>> prototype_hide_fn({"type": "sample", "is_observed": True})
        True
    """
    return _prototype_hide_fn(msg)


def capture_graph(function: Callable[..., Tensor], *example: Tensor) -> torch.fx.GraphModule:
    """``function`` recorded at ``example`` as a graph of plain tensor operations.

    ``torch.fx.experimental.proxy_tensor.make_fx`` (experimental). A Python read of a
    tensor's value (``float()``, ``.item()``, an ``if``) is kept where the tensor does not
    depend on ``example`` (constant data: the value is the same at every call); one on a
    tensor that does raises a ``RuntimeError`` that says "data-dependent".

    Example:
        >>> graph = capture_graph(lambda u: (2 * u).sum(-1), torch.ones(3, 2))
        >>> graph(torch.ones(1, 2))
        tensor([4.])
        >>> data = torch.tensor([1.0, 3.0])
        >>> capture_graph(lambda u: u * float(data.max()), torch.ones(2))(torch.ones(2))
        tensor([3., 3.])
    """
    from torch.fx.experimental.proxy_tensor import make_fx

    module = make_fx(function, _error_on_data_dependent_ops=False)(*example)
    graph = module.graph
    dependent: set[torch.fx.Node] = set()
    for node in graph.nodes:  # topological order: inputs come first
        if node.op == "placeholder" or any(n in dependent for n in node.all_input_nodes):
            dependent.add(node)
    for node in list(graph.nodes):
        if not _reads_value(node):
            continue
        if node in dependent:
            raise RuntimeError(
                f"data-dependent: {node.target} reads the value of a tensor computed from "
                "the input, which a recorded graph cannot replay"
            )
        if not node.users:  # a constant read once at recording: no host sync per call
            graph.erase_node(node)
    module.recompile()
    return module


def _reads_value(node: torch.fx.Node) -> bool:
    """Whether ``node`` is an operation whose output depends on its input's values in a
    way a recorded graph fixes (a Python number read, a data-dependent shape)."""
    target = node.target
    return (
        node.op == "call_function"
        and isinstance(target, torch._ops.OpOverload)
        and (torch.Tag.data_dependent_output in target.tags)
    )


def count_elements(function: Callable[..., object], *args: object) -> int:
    """Run ``function(*args)`` and return how many tensor elements its operations produced
    (torch's private ``TorchDispatchMode``, which sees every operation, in C++ kernels too).

    Example:
        >>> count_elements(lambda x: (x * 2).sum(), torch.ones(3))
        4
    """
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves

    class Count(TorchDispatchMode):
        elements = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            self.elements += sum(t.numel() for t in tree_leaves(out) if isinstance(t, Tensor))
            return out

    with Count() as count:
        function(*args)
    return count.elements


def stored_constraint(name: str, constraint: object | None = None) -> object | None:
    """The constraint Pyro's global param store keeps for ``name`` (``None`` if it holds
    no such parameter); given ``constraint``, store that one instead first.

    ``pyro.param`` and ``PyroModule`` leave an existing entry's constraint as it is, and
    the store offers no public way to read or set one. With Pyro's
    ``module_local_params`` there is no global store to consult: ``None``.

    Example:
        >>> from torch.distributions import constraints
        >>> _ = pyro.param("p", torch.ones(2), constraint=constraints.positive)
        >>> stored_constraint("p") is constraints.positive, stored_constraint("absent")
        (True, None)
    """
    if pyro.settings.get("module_local_params"):
        return None
    constraints = pyro.get_param_store()._constraints
    if constraint is not None and name in constraints:
        constraints[name] = constraint
    return constraints.get(name)

"""Density estimation: a flow over a standard normal, fitted to data by maximum likelihood."""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Callable, Iterator

import pyro.distributions as dist
import torch
from pyro.distributions.conditional import (
    ConditionalTransformedDistribution,
    ConditionalTransformModule,
)
from torch import Tensor, nn
from torch.distributions.transforms import Transform

from ._internal.checks import check_int
from ._internal.locate import warn_at_user
from .errors import NonFiniteLossError
from .flows.conditional import ConditionalRealNVP
from .infer.loop import History, Schedule, check_training_args, train

__all__ = ["anomaly_scores", "bits_per_dim", "dequantize", "fit_density", "flow_distribution"]

Density = torch.distributions.TransformedDistribution | ConditionalTransformedDistribution


def _modules(transforms) -> Iterator[nn.Module]:
    """The ``nn.Module`` behind each transform, looking through ``.inv`` wrappers."""
    for transform in transforms:
        # ``flow.inv`` is a plain Transform whose own ``.inv`` is the flow again.
        module = transform if isinstance(transform, nn.Module) else getattr(transform, "inv", None)
        if isinstance(module, nn.Module):
            yield module


def flow_distribution(*transforms: Transform, input_dim: int | None = None) -> Density:
    r"""The density of :math:`y = f_K \circ \dots \circ f_1(z)`, :math:`z \sim N(0, I_D)`.

    :math:`\log p(y) = \log N(z; 0, I) - \sum_k \log|\det \partial f_k / \partial z_{k-1}|`
    with :math:`z = f^{-1}(y)`; a :class:`~pyro_realnvp.RealNVP` gives ``z`` and its
    log-determinant in one pass. With a conditional transform (such as
    :class:`~pyro_realnvp.ConditionalRealNVP`) the result is a
    :class:`pyro.distributions.ConditionalTransformedDistribution`; call
    ``.condition(context)`` on it. The base lives on the first transform's device/dtype.

    Args:
        transforms: Transforms applied in order to the base draw, e.g. a
            ``RealNVP``, or ``RealNVP, BatchNorm, RealNVP``.
        input_dim: Event size ``D``, an integer ``>= 1``; default (and, where it has one, it
            must equal) the first transform's ``input_dim``.

    Example:
        >>> from pyro_realnvp import RealNVP
        >>> density = flow_distribution(RealNVP(2, num_layers=4))
        >>> density.log_prob(torch.zeros(3, 2))  # a fresh flow is the identity
        tensor([-1.8379, -1.8379, -1.8379], grad_fn=<AddBackward0>)
    """
    if not transforms:
        raise ValueError("flow_distribution needs at least one transform")
    for transform in transforms:
        if not isinstance(transform, Transform | ConditionalTransformModule):
            raise TypeError(
                f"flow_distribution takes flows (torch Transforms such as RealNVP, or "
                f"ConditionalRealNVP), got {type(transform).__name__}"
            )
    first, own = type(transforms[0]).__name__, getattr(transforms[0], "input_dim", None)
    if input_dim is None and own is None:
        raise ValueError(f"input_dim is needed: {first} has no input_dim")
    input_dim = check_int("input_dim", own if input_dim is None else input_dim, 1)
    if own is not None and own != input_dim:
        raise ValueError(
            f"input_dim is {input_dim} but the first transform, {first}, takes vectors of size "
            f"{own}: leave input_dim out (it defaults to {own}) or pass {own}"
        )
    reference = next((p for m in _modules(transforms) for p in m.parameters()), torch.empty(0))
    zeros = reference.new_zeros(input_dim)
    base = dist.Normal(zeros, torch.ones_like(zeros)).to_event(1)
    if any(isinstance(t, ConditionalTransformModule) for t in transforms):
        return ConditionalTransformedDistribution(base, list(transforms))
    return dist.TransformedDistribution(base, list(transforms))


def _as_density(flow_or_distribution) -> Density:
    if isinstance(flow_or_distribution, Density):
        return flow_or_distribution
    if isinstance(flow_or_distribution, Transform | ConditionalTransformModule):
        return flow_distribution(flow_or_distribution)
    raise TypeError(
        "flow_or_distribution must be a (Conditional)TransformedDistribution or a flow "
        f"transform such as RealNVP, got {type(flow_or_distribution).__name__}"
    )


def _as_tensor(value, name: str) -> Tensor:
    """``value`` as a real tensor, or a ``TypeError`` naming it (``None``, a string, ragged
    lists); complex values, which no density over real vectors scores, a ``ValueError``."""
    message = f"{name} must be a tensor, a numpy array or a nested list of numbers"
    if value is None or isinstance(value, str | bytes):
        raise TypeError(f"{message}, got {type(value).__name__}")
    try:
        value = torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError) as error:
        raise TypeError(f"{message}; converting it failed: {error}") from None
    if value.is_complex():
        raise ValueError(
            f"{name} has complex dtype {value.dtype}: the density is over real vectors; pass "
            "the real and imaginary parts as columns, e.g. torch.view_as_real(x).flatten(-2)"
        )
    return value


def _check_data(data, event_dim: int, name: str, *, allow_integer_values: bool) -> Tensor:
    data = _as_tensor(data, name)
    if not (data.is_floating_point() or allow_integer_values):
        raise ValueError(
            f"{name} has integer dtype {data.dtype}: a continuous density of discrete "
            "values is unbounded; dequantize first, e.g. dequantize(data, num_levels)"
        )
    data = data if data.is_floating_point() else data.to(torch.get_default_dtype())
    if data.dim() != 2 or data.shape[-1] != event_dim:
        raise ValueError(f"{name} must have shape (N, {event_dim}), got {tuple(data.shape)}")
    if data.shape[0] == 0:
        raise ValueError(f"{name} must have at least one row, got shape {tuple(data.shape)}")
    bad = ~torch.isfinite(data).all(-1)
    if bool(bad.any()):
        rows = bad.nonzero().flatten()
        raise ValueError(
            f"{name} has {rows.numel()} row(s) with NaN or infinite values, "
            f"first at row(s) {rows[:5].tolist()}"
        )
    if not allow_integer_values and bool((data == data.round()).all()):
        raise ValueError(f"{name} holds only whole numbers {_why_whole(data)}")
    return data


def _why_whole(data: Tensor) -> str:
    """Integer data, or continuous data so large that its dtype holds only whole numbers."""
    largest = data.abs().max().item()
    if largest >= 1 / torch.finfo(data.dtype).eps:  # the spacing of floats there is >= 1
        return (
            f"because its values reach {largest:.3g}, where every {data.dtype} is a whole "
            "number: standardize it first, e.g. (data - data.mean(0)) / data.std(0)"
        )
    return (
        "(integer images?): a continuous density on them is unbounded; dequantize first, "
        "e.g. dequantize(data, num_levels), or pass allow_integer_values=True if the data "
        "are really continuous"
    )


def _check_context(density: Density, context, name: str) -> Tensor | None:
    """``context`` as a float ``(N, C)`` tensor for a conditional density, else ``None``."""
    conditional = isinstance(density, ConditionalTransformedDistribution)
    if conditional and context is None:
        raise ValueError(f"a conditional density needs {name} of shape (N, context_dim)")
    if not conditional:
        if context is not None:
            raise ValueError(f"{name} was given but the density is not conditional")
        return None
    context = _as_tensor(context, name)
    context = context if context.is_floating_point() else context.float()
    # Checked on the whole tensor here: conditioning on its first row alone (to read the
    # event size) would report that row's shape. Other conditional transforms check theirs.
    widths = {t.context_dim for t in density.transforms if isinstance(t, ConditionalRealNVP)}
    width = widths.pop() if len(widths) == 1 else "C"
    if context.dim() != 2 or (width != "C" and context.shape[-1] != width):
        raise ValueError(f"{name} must have shape (N, {width}), got {tuple(context.shape)}")
    return _check_data(context, context.shape[-1], name, allow_integer_values=True)


def _check_inputs(
    density: Density, data, context, names: tuple[str, str], *, allow_integer_values: bool
) -> tuple[Tensor, Tensor | None]:
    """``data`` and ``context`` checked against the density and each other, by name."""
    context = _check_context(density, context, names[1])
    event_dim = (density if context is None else density.condition(context[:1])).event_shape[-1]
    data = _check_data(data, event_dim, names[0], allow_integer_values=allow_integer_values)
    if context is not None and context.shape[0] != data.shape[0]:
        raise ValueError(
            f"{names[1]} must have one row per {names[0]} row ({data.shape[0]}), "
            f"got {context.shape[0]}"
        )
    return data, context


def fit_density(
    flow_or_distribution, data: Tensor, *, context: Tensor | None = None,
    num_steps: int = 2000, batch_size: int = 256, lr: float = 1e-2, lr_decay: float = 0.1,
    clip_norm: float = 10.0, weight_decay: float = 0.0, valid_data: Tensor | None = None,
    valid_context: Tensor | None = None, valid_every: int = 100,
    allow_integer_values: bool = False, progress: bool = True,
    generator: torch.Generator | None = None,
) -> History:  # fmt: skip
    r"""Maximum likelihood, :math:`\max_\phi \frac1B \sum_i \log q_\phi(y_i \mid c_i)`, by Adam.

    Each step scores a mini-batch drawn without replacement (reshuffled every epoch), on
    ``fit``'s one loop and schedule (:class:`~pyro_realnvp.infer.loop.Schedule`): a
    non-finite loss raises :class:`~pyro_realnvp.NonFiniteLossError` having updated
    nothing, Ctrl-C stops after the step (both carry ``.history``). Modules train in
    training mode (a ``BatchNorm`` uses batch statistics), end in evaluation mode. With
    ``valid_data`` the held-out negative log-likelihood is computed every ``valid_every``
    steps and the best parameters are restored at the end (early stopping). A flow with a
    NaN or infinite parameter is refused by name; data far from unit scale (a column's
    median ``|x|`` over ``UNIT_SCALE_LIMIT``) are warned about: standardize them.

    Args:
        flow_or_distribution: A flow (``RealNVP``, ``ConditionalRealNVP``), wrapped by
            :func:`flow_distribution`, or a (conditional) transformed distribution.
        data, context: Observations ``(N, D)``, and for a conditional density their
            contexts ``(N, C)``; batches move to the flow's device.
        num_steps, batch_size, lr, lr_decay, clip_norm, weight_decay: Optimisation.
        valid_data, valid_context, valid_every: Held-out rows for early stopping.
        allow_integer_values: Accept data of whole numbers only (integer pixels need
            :func:`dequantize` first, so they are refused by default).
        progress, generator: The progress bar; the mini-batch order's random generator.

    Returns:
        The mean negative log-likelihood (nats per observation) of each step.

    Example:
        >>> from pyro_realnvp import RealNVP
        >>> flow = RealNVP(1, num_layers=2)
        >>> data = 3.0 + 0.5 * torch.randn(500, 1)
        >>> losses = fit_density(flow, data, num_steps=100, lr=0.1, progress=False)
        >>> round(flow_distribution(flow).sample((4000,)).mean().item())
        3
    """
    density = _as_density(flow_or_distribution)
    check_training_args(num_steps=num_steps, lr=lr, lr_decay=lr_decay, clip_norm=clip_norm)
    batch_size = check_int("batch_size", batch_size, 1)
    valid_every = check_int("valid_every", valid_every, 1)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {generator!r}")
    data, context, valid_data, valid_context = _check_all_inputs(
        density, data, context, valid_data, valid_context, allow_integer_values
    )
    modules = list(_modules(density.transforms))
    params = _trainable_parameters(modules)
    _check_finite_state(modules)
    schedule = Schedule(lr=lr, lr_decay=lr_decay, clip_norm=clip_norm, num_steps=num_steps)
    step = _LikelihoodStep(density, params, data, context, batch_size, generator)
    step.optimize(schedule, weight_decay)
    best = _BestHeldOut(density, modules, valid_data, valid_context, valid_every, num_steps)
    with best.training():
        return train(step, num_steps, max_redraws=0, progress=progress, monitor=best.monitor)


def _check_finite_state(modules: list[nn.Module]) -> None:
    """Refuse modules with a NaN or infinite parameter or buffer, by name; one host sync."""
    named = {
        f"{type(m).__name__}[{i}]." * (len(modules) > 1) + name: tensor
        for i, m in enumerate(modules)
        for name, tensor in (*m.named_parameters(), *m.named_buffers())
        if tensor.is_floating_point()
    }
    if named and not bool(torch.stack([t.isfinite().all() for t in named.values()]).all()):
        bad = [name for name, tensor in named.items() if not bool(tensor.isfinite().all())]
        raise ValueError(
            f"the flow's {', '.join(bad)} hold(s) NaN or infinite values, so its density is "
            "undefined: re-initialize the flow, or load parameters saved before they diverged"
        )


def _check_all_inputs(density, data, context, valid_data, valid_context, integers: bool):
    """``data``, ``context`` and their held-out counterparts, checked by name."""
    data, context = _check_inputs(
        density, data, context, ("data", "context"), allow_integer_values=integers
    )
    if len(data) < 2:
        raise ValueError(
            "data has 1 row: the likelihood of one point has no maximum (the density "
            "collapses onto it, its scale to 0): fit many rows, far more than the dimension"
        )
    if valid_data is None and valid_context is not None:
        raise ValueError(
            "valid_context was given without valid_data: pass both for early stopping, or neither"
        )
    if valid_data is not None:
        names = ("valid_data", "valid_context")
        valid_data, valid_context = _check_inputs(
            density, valid_data, valid_context, names, allow_integer_values=integers
        )
    return data, context, valid_data, valid_context


class _BestHeldOut:
    """Early stopping: the held-out negative log-likelihood every ``every`` steps (and at
    the last), the modules' best state kept and restored. Nothing without held-out data."""

    def __init__(self, density, modules, data, context, every: int, num_steps: int) -> None:
        self.density, self.modules, self.data, self.context = density, modules, data, context
        self.every, self.num_steps = every, num_steps
        self.best = (math.inf, None)

    def monitor(self, index: int, loss: float) -> dict:
        """The loop's ``monitor`` after step ``index``: keeps the state of best held-out NLL."""
        if self.data is None or ((index + 1) % self.every and index + 1 != self.num_steps):
            return {}
        for module in self.modules:
            module.eval()
        nll = float(_scores(self.density, self.data, self.context, 4096).mean())
        for module in self.modules:
            module.train()
        if nll < self.best[0]:  # a NaN score never wins
            self.best = (nll, [copy.deepcopy(m.state_dict()) for m in self.modules])
        return {"valid_nll": f"{self.best[0]:.4g}"}

    @contextlib.contextmanager
    def training(self) -> Iterator[None]:
        """The modules in training mode; after, in evaluation mode at their best state."""
        for module in self.modules:
            module.train()
        try:
            yield
        finally:
            for module in self.modules:
                module.eval()
            if self.best[1] is not None:
                for module, state in zip(self.modules, self.best[1], strict=True):
                    module.load_state_dict(state)


def _trainable_parameters(modules: list[nn.Module]) -> list[Tensor]:
    """The modules' parameters that require grad, each once; refuse if there are none."""
    unique = {id(p): p for m in modules for p in m.parameters()}.values()
    params = [p for p in unique if p.requires_grad]
    if not params:
        frozen = " (every parameter has requires_grad=False)" if unique else ""
        raise ValueError(f"the density has no trainable parameters{frozen}")
    return params


#: Data typically (median) beyond this |x| are warned about, and data reaching it named as
#: the likely cause of a non-finite loss: a fresh flow's density is near exp(-x**2 / 2).
UNIT_SCALE_LIMIT = 1e4


class _LikelihoodStep:
    """One Adam step on a mini-batch's mean negative log-likelihood."""

    name = "MLE"

    optimizer: torch.optim.Optimizer
    decay: torch.optim.lr_scheduler.LRScheduler
    clip: Callable[[list[Tensor]], None]

    def optimize(self, schedule: Schedule, weight_decay: float) -> None:
        """Step by ``schedule``'s optimizer, decay and clipping."""
        self.optimizer, self.decay = schedule.torch_optimizer(self.params, weight_decay)
        self.clip = schedule.clip

    def __init__(self, density, params, data, context, batch_size, generator):
        self.density, self.params, self.data, self.context = density, params, data, context
        self.batches = _minibatches(data.shape[0], batch_size, generator)
        self.device, self.dtype = params[0].device, params[0].dtype
        self._scale = _scale_advice(data)  # warns now if the data are far from unit scale

    def __call__(self) -> float:
        index = next(self.batches)
        y = self.data[index].to(device=self.device, dtype=self.dtype)
        q = self.density
        if self.context is not None:
            q = q.condition(self.context[index].to(device=self.device, dtype=self.dtype))
        self.optimizer.zero_grad(set_to_none=True)
        loss = -q.log_prob(y).mean()
        loss.backward()
        value = loss.item()
        if not math.isfinite(value):
            self.clear_grads()
            raise NonFiniteLossError(
                f"negative log-likelihood is {value}; no parameter was updated{self._scale}"
            )
        self.clip(self.params)
        self.optimizer.step()
        self.decay.step()
        return value

    def clear_grads(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)


def _scale_advice(data: Tensor) -> str:
    """Warn if a column's median ``|x|`` passes the limit; what a non-finite loss advises if
    ``data`` reach it. (A fresh flow is near a standard normal: such data crawl or overflow.)"""
    largest, typical = data.abs().max().item(), data.abs().median(0).values.max().item()
    fix = "standardize them first, e.g. (data - data.mean(0)) / data.std(0)"
    if typical > UNIT_SCALE_LIMIT:
        warn_at_user(f"data are far from unit scale (typical |x| = {typical:.3g}): {fix}")
    return f". The data reach |x| = {largest:.3g}: {fix}" if largest > UNIT_SCALE_LIMIT else ""


def _minibatches(n: int, batch_size: int, generator: torch.Generator | None) -> Iterator[Tensor]:
    """Index batches without replacement, reshuffling every epoch; forever."""
    batch_size = min(batch_size, n)
    while True:
        order = torch.randperm(n, generator=generator)
        for start in range(0, n - batch_size + 1, batch_size):
            yield order[start : start + batch_size]


def anomaly_scores(
    flow_or_distribution, data: Tensor, *, context: Tensor | None = None, batch_size: int = 4096
) -> Tensor:
    r"""Negative log-density, :math:`-\log q(y \mid c)`: the larger, the less typical ``y``.

    Evaluated in chunks of ``batch_size`` without gradients, on the flow's device; the
    scores come back on ``data``'s device.

    Args:
        flow_or_distribution: As for :func:`fit_density`.
        data: Points of shape ``(N, D)``, at least one row, all finite.
        context: Conditioning values of shape ``(N, C)``, required for a conditional
            density and refused otherwise.
        batch_size: Rows scored per chunk.

    Raises:
        ValueError: naming ``data`` or ``context`` when its shape or values are wrong, or
            the flow's parameter (or buffer) that holds NaN or infinite values.

    Example:
        >>> from pyro_realnvp import RealNVP
        >>> scores = anomaly_scores(RealNVP(2, num_layers=2), torch.tensor([[0.0, 0], [5, 5]]))
        >>> bool(scores[1] > scores[0])
        True
    """
    density = _as_density(flow_or_distribution)
    batch_size = check_int("batch_size", batch_size, 1)
    names = ("data", "context")
    data, context = _check_inputs(density, data, context, names, allow_integer_values=True)
    _check_finite_state(list(_modules(density.transforms)))
    return _scores(density, data, context, batch_size)


@torch.no_grad()
def _scores(density: Density, data: Tensor, context: Tensor | None, batch_size: int) -> Tensor:
    """:func:`anomaly_scores` of checked inputs, in chunks (early stopping's, each check)."""
    reference = next((p for m in _modules(density.transforms) for p in m.parameters()), data)
    scores = []
    for start in range(0, data.shape[0], batch_size):
        rows = slice(start, start + batch_size)
        y = data[rows].to(reference)
        q = density if context is None else density.condition(context[rows].to(y))
        scores.append(-q.log_prob(y).to(data.device))
    return torch.cat(scores)


def dequantize(
    data: Tensor, num_levels: int, *, generator: torch.Generator | None = None
) -> Tensor:
    r"""Uniform dequantisation to the unit cube, :math:`y = (x + u) / K`, :math:`u \sim U[0,1)^D`.

    A continuous density on ``y`` bounds the discrete likelihood:
    :math:`\log P(x) \ge \log q(y) - D \log K` (Theis et al., 2016).

    ``num_levels`` must be an integer ``K >= 2``: with one level every value is 0, the data
    carry no information, and ``num_levels=1`` is more likely a bit depth than a level count.

    Raises:
        TypeError, ValueError: naming ``num_levels`` when it is not an integer ``>= 2``.
        TypeError: naming ``generator`` when it is neither a ``torch.Generator`` nor ``None``.
        ValueError: if ``data`` holds values other than the integers ``0 .. K-1``.

    Example:
        >>> y = dequantize(torch.tensor([[0, 3]]), num_levels=4)
        >>> bool(((y >= torch.tensor([0.0, 0.75])) & (y < torch.tensor([0.25, 1.0]))).all())
        True
    """
    num_levels = check_int("num_levels", num_levels, 2)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {generator!r}")
    data = _as_tensor(data, "data")
    values = data.to(torch.get_default_dtype()) if not data.is_floating_point() else data
    if not bool(((values == values.round()) & (values >= 0) & (values < num_levels)).all()):
        raise ValueError(f"data must hold integers in [0, {num_levels - 1}] (num_levels)")
    noise = torch.rand(values.shape, generator=generator, dtype=values.dtype)
    return (values + noise.to(values.device)) / num_levels


def bits_per_dim(log_prob: Tensor, dim: int, num_levels: int) -> Tensor:
    r"""Bits per dimension of discrete data, :math:`-(\log q(y) - D \log K) / (D \log 2)`.

    ``log_prob`` is the density of the dequantised data ``y = (x + u) / K`` on the unit
    cube (see :func:`dequantize`), so the result bounds the discrete code length from
    above. ``log_prob`` must be a tensor (array, number), ``dim`` an integer ``>= 1``
    and ``num_levels`` one ``>= 2`` (as for :func:`dequantize`); otherwise a ``TypeError``
    or ``ValueError`` names them.

    Example:
        >>> bits_per_dim(torch.tensor(0.0), dim=4, num_levels=256)  # uniform on the cube
        tensor(8.)
    """
    dim, num_levels = check_int("dim", dim, 1), check_int("num_levels", num_levels, 2)
    array_like = isinstance(log_prob, float | int) or hasattr(log_prob, "__array__")
    if isinstance(log_prob, bool) or not array_like:
        name = type(log_prob).__name__
        raise TypeError(f"log_prob must be a tensor, got {name}: use torch.as_tensor(log_prob)")
    return -(log_prob - dim * math.log(num_levels)) / (dim * math.log(2))

r"""Posterior summaries of a packed-latent guide: marginal quantiles and medians per site.

Quantiles of the unconstrained latent :math:`u` are exact while the flow is the identity
(:math:`u` is then Gaussian) and otherwise taken from fixed-seed draws, so repeated calls
agree. A site's support map :math:`T = \texttt{biject\_to}(\text{support})` carries them
to the site: exactly, where :math:`T` acts elementwise and is monotone.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from pyro import poutine
from pyro.distributions.transforms import ComposeTransform
from torch import Tensor, nn
from torch.distributions import biject_to
from torch.distributions.transforms import IndependentTransform, Transform

__all__ = [
    "PackedPosterior",
    "check_finite_params",
    "check_levels",
    "elementwise_sign",
    "flow_is_identity",
    "marginal_quantiles",
    "median",
    "packed_posterior",
    "site_blocks",
    "site_quantiles",
]

#: ``(site, unconstrained shape)`` of each latent site, in packing order.
Sites = Sequence[tuple[dict, torch.Size]]


@dataclass(frozen=True)
class PackedPosterior:
    r"""What the summaries read of a guide over a packed latent :math:`u`.

    Attributes:
        sites: ``(site, unconstrained shape)`` of each latent site, in packing order.
        loc, sd: Marginal means and standard deviations of :math:`u` while ``gaussian``.
        gaussian: Whether :math:`u` is exactly Gaussian (the flow is the identity).
        draws: Fixed-seed draws of :math:`u`, shape ``(N, D)``, for when it is not.

    Example:
        >>> import pyro.distributions as dist
        >>> sites = [({"name": "x", "fn": dist.Normal(0.0, 1.0)}, torch.Size([]))]
        >>> packed = PackedPosterior(sites, torch.zeros(1), torch.ones(1), True, None)
        >>> median(packed)
        {'x': tensor(0.)}
    """

    sites: Sites
    loc: Tensor
    sd: Tensor
    gaussian: bool
    draws: Callable[[], Tensor]


def unconstrained_quantiles(packed: PackedPosterior, levels: Tensor) -> Tensor:
    r"""Marginal quantiles of :math:`u` at 1-d ``levels``, shape ``(len(levels), D)``:
    :math:`\mu_i + \sigma_i \Phi^{-1}(q)` while Gaussian, else from the draws."""
    if not packed.gaussian:
        return torch.quantile(packed.draws(), levels, dim=0)
    return packed.loc + packed.sd * torch.special.ndtri(levels)[:, None]


def marginal_quantiles(packed: PackedPosterior, levels: Tensor) -> dict[str, Tensor]:
    """Each site's marginal quantiles at ``levels`` (checked), in its support, shape
    ``levels.shape + site_shape`` (:func:`site_quantiles`).

    Example:
        >>> import pyro.distributions as dist
        >>> sites = [({"name": "s", "fn": dist.LogNormal(0.0, 1.0)}, torch.Size([]))]
        >>> packed = PackedPosterior(sites, torch.zeros(1), torch.ones(1), True, None)
        >>> marginal_quantiles(packed, torch.tensor([0.5, 0.975]))["s"]
        tensor([1.0000, 7.0991])
    """
    flat = levels.reshape(-1)
    u = unconstrained_quantiles(packed, torch.cat([flat, 1 - flat]))
    values = site_quantiles(packed.sites, flat, u, lambda: _constrained_draws(packed))
    return {name: v.reshape(levels.shape + v.shape[1:]) for name, v in values.items()}


def median(packed: PackedPosterior) -> dict[str, Tensor]:
    """Each site at its support map of the coordinate-wise median of :math:`u`: a point on
    the support, the marginal median where the map is elementwise (see module docstring).

    Example:
        >>> import pyro.distributions as dist
        >>> sites = [({"name": "p", "fn": dist.Dirichlet(torch.ones(3))}, torch.Size([2]))]
        >>> packed = PackedPosterior(sites, torch.zeros(2), torch.ones(2), True, None)
        >>> median(packed)["p"]  # on the simplex
        tensor([0.3333, 0.3333, 0.3333])
    """
    u = unconstrained_quantiles(packed, check_levels([0.5], packed.loc))
    return {site["name"]: biject_to(site["fn"].support)(value[0])
            for site, value in site_blocks(packed.sites, u)}  # fmt: skip


def _constrained_draws(packed: PackedPosterior) -> dict[str, Tensor]:
    return {site["name"]: biject_to(site["fn"].support)(value)
            for site, value in site_blocks(packed.sites, packed.draws())}  # fmt: skip


def elementwise_sign(transform: Transform) -> Tensor | int | None:
    """The sign of ``transform``'s derivative where it acts elementwise (``+1``, ``-1``
    or one per element); ``None`` where it mixes elements (stick-breaking, ordering,
    Cholesky factors) or its sign is not known.

    Example:
        >>> from torch.distributions import constraints
        >>> [elementwise_sign(biject_to(c)) for c in (constraints.positive,
        ...  constraints.less_than(1.0), constraints.simplex)]
        [1, -1, None]
    """
    if isinstance(transform, IndependentTransform):
        return elementwise_sign(transform.base_transform)
    if isinstance(transform, ComposeTransform):
        sign = 1
        for part in transform.parts:
            part_sign = elementwise_sign(part)
            if part_sign is None:
                return None
            sign = sign * part_sign
        return sign
    if transform.domain.event_dim or transform.codomain.event_dim:
        return None
    try:
        return transform.sign
    except NotImplementedError:
        return None


def flow_is_identity(flow: nn.Module) -> bool:
    """Whether every coupling's conditioner ends in a zero layer, as built: the flow is then
    exactly the identity (a trained or loaded flow fails this at its first nonzero weight).

    Example:
        >>> from pyro_realnvp.flows import RealNVP
        >>> flow_is_identity(RealNVP(2, num_layers=2))
        True
    """
    return all(
        isinstance(layer.net, nn.Sequential)
        and not any(bool(p.any()) for p in layer.net[-1].parameters())
        for layer in flow.layers
    )


def site_blocks(sites: Sites, latent: Tensor) -> Iterator[tuple[dict, Tensor]]:
    """Each site and its block of ``latent`` (``(N, D)``), shaped ``(N,) + shape``.

    Example:
        >>> sites = [({"name": "a"}, torch.Size([2])), ({"name": "b"}, torch.Size([]))]
        >>> [(site["name"], tuple(v.shape)) for site, v in site_blocks(sites, torch.zeros(5, 3))]
        [('a', (5, 2)), ('b', (5,))]
    """
    position = 0
    for site, shape in sites:
        block = latent[:, position : position + shape.numel()]
        yield site, block.reshape(latent.shape[:1] + shape)
        position += shape.numel()


def site_quantiles(
    sites: Sites, levels: Tensor, u: Tensor, constrained_draws: Callable[[], dict[str, Tensor]]
) -> dict[str, Tensor]:
    r"""Each site's marginal quantiles at 1-d ``levels``, shape ``levels.shape + site_shape``.

    ``u`` holds the unconstrained quantiles at ``levels`` then at ``1 - levels``. Where
    the support map :math:`T` is elementwise, :math:`Q_{z}(q) = T(Q_u(q))`, or
    :math:`T(Q_u(1 - q))` where :math:`T` decreases; elsewhere (simplex, ordered,
    Cholesky factors) each coordinate's quantiles come from ``constrained_draws()``:
    they increase with :math:`q`, but a row of them need not lie on the support.

    Example:
        >>> from torch.distributions import constraints
        >>> import pyro.distributions as dist
        >>> sites = [({"name": "s", "fn": dist.LogNormal(0.0, 1.0)}, torch.Size([]))]
        >>> site_quantiles(sites, torch.tensor([0.5]), torch.zeros(2, 1), dict)
        {'s': tensor([1.])}
    """
    at_q, at_complement = u[: len(levels)], u[len(levels) :]
    draws, result = None, {}
    for (site, value), (_, complement) in zip(
        site_blocks(sites, at_q), site_blocks(sites, at_complement), strict=True
    ):
        transform = biject_to(site["fn"].support)
        sign = elementwise_sign(transform)
        if sign is None:
            draws = constrained_draws() if draws is None else draws
            site_draws = draws[site["name"]]
            value = torch.quantile(site_draws.reshape(len(site_draws), -1), levels, dim=0)
            value = value.reshape(levels.shape + site_draws.shape[1:])
        else:
            decreasing = torch.as_tensor(sign, device=levels.device) < 0
            value = torch.where(decreasing, transform(complement), transform(value))
        result[site["name"]] = value
    return result


def check_levels(quantiles: Sequence[float] | Tensor, like: Tensor) -> Tensor:
    """``quantiles`` as a tensor on ``like``'s device and dtype, each in [0, 1].

    Example:
        >>> check_levels([0.1, 0.9], torch.zeros(1))
        tensor([0.1000, 0.9000])
    """
    try:
        levels = torch.as_tensor(quantiles, dtype=like.dtype, device=like.device)
    except (TypeError, ValueError, RuntimeError) as error:
        raise TypeError(f"quantiles must be numbers in [0, 1], got {quantiles!r}") from error
    if levels.numel() == 0:
        raise ValueError(f"quantiles must hold at least one level, got {quantiles!r}")
    if not bool(((levels >= 0) & (levels <= 1)).all()):
        raise ValueError(f"quantiles must lie in [0, 1], got {quantiles}")
    return levels


def check_finite_params(params: dict[str, Tensor],
                        why: str = "its median and quantiles would be NaN") -> None:  # fmt: skip
    """Refuse to use a guide whose parameters are not finite, naming them: every quantile
    or draw would be NaN, which says nothing of which parameter (or why).

    Example:
        >>> check_finite_params({"loc": torch.tensor([0.0, float("nan")])})
        Traceback (most recent call last):
        ...
        ValueError: the guide's parameter(s) ['loc'] hold NaN or infinite values, so its median and quantiles would be NaN: fit it again from a fresh guide (and pyro.clear_param_store()), or load a saved one
    """  # noqa: E501
    if not params:
        return
    finite = torch.stack([torch.isfinite(p.detach()).all() for p in params.values()])
    if bool(finite.all()):
        return
    bad = [name for name, ok in zip(params, finite.tolist(), strict=True) if not ok]
    raise ValueError(
        f"the guide's parameter(s) {bad} hold NaN or infinite values, so {why}: fit it "
        "again from a fresh guide (and pyro.clear_param_store()), or load a saved one"
    )


def packed_posterior(guide, args: tuple, kwargs: dict) -> PackedPosterior:
    """What the summaries read of an :class:`~pyro_realnvp.AutoRealNVP`: the guide set up
    (or its stored values taken, as a call would, so summaries agree before and after
    one), its parameters finite.

    Example:
        >>> import pyro, pyro.distributions as dist
        >>> from pyro_realnvp import AutoRealNVP
        >>> guide = AutoRealNVP(lambda: pyro.sample("x", dist.Normal(0.0, 1.0)))
        >>> packed_posterior(guide, (), {}).gaussian
        True
    """
    if guide.prototype_trace is None:
        with poutine.block():
            guide(*args, **kwargs)
    else:
        with poutine.block(), guide._pyro_context:
            for name in guide._pyro_params:
                getattr(guide, name)  # PyroModule syncs a parameter with the store
            guide._register_flow()
    params = {name: getattr(guide, name) for name in guide._pyro_params}
    params.update({f"flow.{n}": p for n, p in guide.flow.named_parameters()})
    check_finite_params(params)
    sd = guide.scale.detach()
    if "scale_tril" in guide._pyro_params:
        sd = sd * guide.scale_tril.detach().norm(dim=-1)
    sites = [(site, guide._unconstrained_shapes[name])
             for name, site in guide.prototype_trace.iter_stochastic_nodes()]  # fmt: skip
    return PackedPosterior(sites, guide.loc.detach(), sd, flow_is_identity(guide.flow),
                           lambda: guide.latent_draws(guide.num_quantile_samples))  # fmt: skip

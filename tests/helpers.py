"""Helpers the tests share: transforms moved off the identity, log-dets by autograd, no
host syncs on a GPU, potentials with known modes and curvature."""

import math
import socket
from contextlib import contextmanager

import pyro
import pyro.distributions as dist
import torch

from pyro_realnvp.flows.conditioner import ScaledLinear


@contextmanager
def no_host_sync():
    """Raise at any call that waits on the GPU (``torch.cuda.set_sync_debug_mode``)."""
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")


def randomize_(module: torch.nn.Module, std: float = 0.1, seed: int = 0) -> torch.nn.Module:
    """Move every parameter away from the identity initialisation (effective weights
    of :class:`~pyro_realnvp.nn.ScaledLinear` layers get the same ``std``)."""
    generator = torch.Generator().manual_seed(seed)
    gains = {id(m.weight): m.gain for m in module.modules() if isinstance(m, ScaledLinear)}
    with torch.no_grad():
        for param in module.parameters():
            noise = torch.randn(param.shape, generator=generator, dtype=param.dtype) * std
            param.copy_(noise.to(param.device) / gains.get(id(param), 1.0))
    return module


def saturate_(module: torch.nn.Module, level: float = 1e3) -> torch.nn.Module:
    """Push every coupling's raw log-scale far past its bound, alternating in sign."""
    couplings = [m for m in module.modules() if hasattr(m, "scale_bound")]
    with torch.no_grad():
        for index, coupling in enumerate(couplings):
            last = coupling.net[-1]
            dim = last.bias.numel() // 2
            sign = 1.0 if index % 2 == 0 else -1.0
            last.bias[:dim] = sign * level / coupling.output_gain
    return module


def autograd_log_det(transform, x: torch.Tensor) -> torch.Tensor:
    """``log|det J|`` of ``transform`` at each row of ``x`` by the autograd Jacobian."""
    values = []
    for row in x.reshape(-1, x.shape[-1]):
        jacobian = torch.autograd.functional.jacobian(lambda v: transform._call(v), row)
        values.append(torch.linalg.slogdet(jacobian)[1])
    return torch.stack(values).reshape(x.shape[:-1])


def hierarchical(data):
    """Groups with a shared mean, observed ``data.shape[1]`` times each: a plate in a plate."""

    def model():
        mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
        with pyro.plate("groups", data.shape[0]):
            theta = pyro.sample("theta", dist.Normal(mu, 1.0))
            with pyro.plate("obs", data.shape[1]):
                pyro.sample("y", dist.Normal(theta, 1.0), obs=data.T)

    return model


def poisonable_model(state):
    def model():
        x = pyro.sample("x", dist.Normal(0.0, 1.0))
        shift = float("inf") if state["poison"] else 0.0
        pyro.sample("likelihood", dist.Normal(x + shift, 1.0), obs=torch.tensor(1.0))

    return model


def baseball(at_bats, hits):
    """Pyro's examples/baseball.py, partially_pooled_with_logit."""
    loc = pyro.sample("loc", dist.Normal(-1.0, 1.0))
    scale = pyro.sample("scale", dist.HalfCauchy(scale=1.0))
    with pyro.plate("num_players", at_bats.shape[0]):
        alpha = pyro.sample("alpha", dist.Normal(loc, scale))
        pyro.sample("obs", dist.Binomial(at_bats, logits=alpha), obs=hits)


#: Efron and Morris's 18 players, 45 at-bats each.
HITS = torch.tensor([18, 17, 16, 15, 14, 14, 13, 12, 11, 11, 10, 10, 10, 10, 10, 9, 8, 7.0])


def spd(dim: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    a = torch.randn(dim, dim, generator=generator, dtype=torch.float64)
    return a @ a.T + dim * torch.eye(dim, dtype=torch.float64)


def quadratic(precision: torch.Tensor, mode: torch.Tensor):
    return lambda u: 0.5 * (u - mode) @ precision @ (u - mode)


def two_wells(u):
    """A shallow well at u = -1 (weight 0.3) and the deep one at u = +1, in each coordinate."""
    wells = torch.stack([-2 * (u + 1) ** 2 + math.log(0.3), -2 * (u - 1) ** 2])
    return -torch.logsumexp(wells, 0).sum()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (for a process group's store)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

"""Pyro SVI as a Lightning module: ``Trainer(strategy="ddp")`` for many processes and nodes.

Pyro's own recipe (``examples/svi_lightning.py``) trains the ELBO module
``Trace_ELBO()(model, guide)`` in a ``LightningModule``; :class:`SVIModule` is that
recipe with this package's training policy: the guide set up before Lightning wraps it
in ``DistributedDataParallel``, ``ClippedAdam`` with the learning-rate decay and
clipping of :func:`~pyro_realnvp.fit`, and a step that is not finite on any rank
updating nothing on every rank, redrawn up to ``max_redraws`` times in a row and then
raised, naming the rank. Lightning brings the rest: launching (``devices``,
``num_nodes``, ``torchrun``, SLURM), checkpoints and resume, logging.

Needs the ``lightning`` extra: ``pip install "pyro-realnvp[lightning]"``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import lightning.pytorch as pl
from pyro.infer import Trace_ELBO
from pyro.infer.elbo import ELBO
from pyro.optim.clipped_adam import ClippedAdam
from torch.nn.parallel import DistributedDataParallel

from .ddp import (
    _backward_and_agree,
    _check_params_in_module,
    _explainer,
    _finite_allreduce_hook,
    _GuardedELBO,
    _LocalFinite,
    setup_guide,
)
from .train import NonFiniteLossError

__all__ = ["SVIModule"]


def _as_arguments(batch) -> tuple[tuple, dict]:
    """A batch as the model's arguments: a dict is keywords, a tuple or list positional."""
    if isinstance(batch, dict):
        return (), batch
    if isinstance(batch, tuple | list):
        return tuple(batch), {}
    return (batch,), {}


class SVIModule(pl.LightningModule):
    """SVI of ``model`` with ``guide`` as a ``LightningModule``; a batch is the model's arguments.

    ``args`` are example arguments (the first batch, or all the data) on which the guide
    is set up here, so that its parameters exist before Lightning wraps this module in
    DDP (which then copies rank 0's to every rank). The model should scale its
    likelihood to the full data with :func:`~pyro_realnvp.distributed.data_plate` (or
    ``pyro.plate(size=N, subsample=...)``): under ``strategy="ddp"`` each rank sees its
    share of every epoch. The optimizer is ``ClippedAdam`` at ``lr``, decayed to
    ``lr * lr_decay`` by ``Trainer(max_steps=...)``, the gradients' total norm clipped
    at ``clip_norm``, as in :func:`~pyro_realnvp.fit`. Optimization is manual: a step
    whose loss or gradients are not finite on any rank is skipped on every rank
    (Lightning's own skipping cannot be used under DDP), ``max_redraws`` times in a row
    at most. ``losses`` holds the rank-averaged loss of each step taken; ``loss`` is
    logged.

    Example:
        >>> import logging, pyro, pyro.distributions as dist, torch
        >>> from torch.utils.data import DataLoader, TensorDataset
        >>> from pyro_realnvp.distributed import data_plate
        >>> logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
        >>> y = torch.randn(100) + 3.0
        >>> def model(y):
        ...     mu = pyro.sample("mu", dist.Normal(0.0, 10.0))
        ...     with data_plate("data", 100, len(y)) as idx:
        ...         pyro.sample("y", dist.Normal(mu, 1.0), obs=y[idx])
        >>> guide = pyro.infer.autoguide.AutoNormal(model)
        >>> svi = SVIModule(model, guide, y, lr=0.05)
        >>> trainer = pl.Trainer(max_steps=300, logger=False, enable_checkpointing=False,
        ...                      enable_progress_bar=False, enable_model_summary=False)
        >>> trainer.fit(svi, DataLoader(TensorDataset(y), batch_size=100))
        >>> len(svi.losses), round(guide.median()["mu"].item())
        (300, 3)
    """

    def __init__(
        self,
        model: Callable,
        guide: Callable,
        *args,
        loss: ELBO | None = None,
        lr: float = 1e-2,
        lr_decay: float = 0.1,
        clip_norm: float = 10.0,
        max_redraws: int = 3,
    ) -> None:
        super().__init__()
        self.automatic_optimization = False
        params = setup_guide(model, guide, *args)
        self.guarded = _GuardedELBO((Trace_ELBO() if loss is None else loss)(model, guide))
        _check_params_in_module(params, self.guarded)
        self.lr, self.lr_decay, self.clip_norm = lr, lr_decay, clip_norm
        self.max_redraws = max_redraws
        self.losses: list[float] = []
        self.redraws = 0
        self._in_a_row = 0
        self._local: _LocalFinite | None = None

    def configure_optimizers(self) -> ClippedAdam:
        steps = self.trainer.max_steps if self.trainer.max_steps > 0 else None
        lrd = self.lr_decay ** (1 / steps) if steps else 1.0
        # Entries unclipped here: the step clips the total norm, fit's one rule.
        return ClippedAdam(self.parameters(), lr=self.lr, lrd=lrd, clip_norm=math.inf)

    def on_fit_start(self) -> None:
        """Under DDP, note each rank's own gradient finiteness so errors can name it."""
        ddp = self.trainer.strategy.model
        self._local = None
        if isinstance(ddp, DistributedDataParallel):
            local = _LocalFinite()
            try:
                ddp.register_comm_hook(local, _finite_allreduce_hook)
                self._local = local
            except RuntimeError:  # a hook of the user's own is in place: keep it
                pass

    def training_step(self, batch, batch_idx: int) -> None:
        args, kwargs = _as_arguments(batch)
        if self._local is not None:
            self._local.checks.clear()
        loss = self.guarded(*args, **kwargs)
        elbo_module = self.guarded.elbo_module
        explain = _explainer(elbo_module.model, elbo_module.guide, args, kwargs)
        try:
            value = _backward_and_agree(
                self.guarded, loss, self.manual_backward, self._local, explain
            )
        except NonFiniteLossError as error:
            self.redraws += 1
            self._in_a_row += 1
            if self._in_a_row > self.max_redraws:
                raise NonFiniteLossError(
                    f"{error} It stayed non-finite over {self._in_a_row} batches in a row."
                ) from error
            return
        self._in_a_row = 0
        optimizer = self.optimizers()
        if math.isfinite(self.clip_norm):
            # Lightning's own call: under mixed precision it unscales the gradients first.
            self.clip_gradients(optimizer, self.clip_norm, gradient_clip_algorithm="norm")
        optimizer.step()
        optimizer.zero_grad()
        self.losses.append(value)
        self.log("loss", value, prog_bar=True)

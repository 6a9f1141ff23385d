"""Pyro SVI as a Lightning module: ``Trainer(strategy="ddp")`` for many processes and nodes.

Pyro's own recipe (``examples/svi_lightning.py``) trains the ELBO module
``Trace_ELBO()(model, guide)`` in a ``LightningModule``; :class:`SVIModule` is that
recipe with this package's training policy, taken from the one loop
(:mod:`pyro_realnvp.infer.loop`): ``fit``'s :class:`~pyro_realnvp.infer.loop.Schedule`
and :class:`~pyro_realnvp.infer.loop.RedrawPolicy`, the guide set up before Lightning
wraps it in ``DistributedDataParallel``, and a step not finite on any rank updating
nothing on every rank (:mod:`.agreement`). Lightning brings the rest: launching
(``devices``, ``num_nodes``, ``torchrun``, SLURM), checkpoints and resume, logging.

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

from ..errors import NonFiniteLossError
from ..infer.loop import RedrawPolicy, Schedule
from .agreement import (
    GuardedELBO,
    LocalFinite,
    backward_and_agree,
    check_params_in_module,
    explainer,
    finite_allreduce_hook,
    setup_guide,
)

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
    share of every epoch. The optimizer is ``fit``'s :class:`~pyro_realnvp.infer.loop.Schedule`
    on Pyro's ELBO: ``ClippedAdam`` at ``lr``, decayed to ``lr * lr_decay`` by
    ``Trainer(max_steps=...)``, the gradients' total norm clipped at ``clip_norm``.
    Optimization is manual: a step whose loss or gradients are not finite on any rank is
    skipped on every rank (Lightning's own skipping cannot be used under DDP), as
    ``fit``'s :class:`~pyro_realnvp.infer.loop.RedrawPolicy` says (``max_redraws``).
    ``losses`` holds the rank-averaged loss of each step taken; ``loss`` is logged.

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
        self.guarded = GuardedELBO((Trace_ELBO() if loss is None else loss)(model, guide))
        check_params_in_module(params, self.guarded)
        self.lr, self.lr_decay, self.clip_norm = lr, lr_decay, clip_norm
        self.policy = RedrawPolicy(max_redraws)
        self.losses: list[float] = []
        self._local: LocalFinite | None = None

    @property
    def redraws(self) -> int:
        """Steps skipped after a non-finite loss, over the run so far."""
        return self.policy.total + self.policy.in_a_row

    @property
    def max_redraws(self) -> int:
        """Non-finite steps in a row that are skipped before the next one raises."""
        return self.policy.max_redraws

    def schedule(self) -> Schedule:
        """``fit``'s schedule for this run: the decay reaches ``lr * lr_decay`` at
        ``Trainer(max_steps=...)``, and does not decay without it."""
        steps = self.trainer.max_steps
        if steps > 0:
            return Schedule(self.lr, self.lr_decay, self.clip_norm, steps)
        return Schedule(self.lr, 1.0, self.clip_norm, 1)

    def configure_optimizers(self) -> ClippedAdam:
        self._schedule = self.schedule()
        return self._schedule.clipped_adam(list(self.parameters()))

    def on_fit_start(self) -> None:
        """Under DDP, note each rank's own gradient finiteness so errors can name it."""
        ddp = self.trainer.strategy.model
        self._local = None
        if isinstance(ddp, DistributedDataParallel):
            local = LocalFinite()
            try:
                ddp.register_comm_hook(local, finite_allreduce_hook)
                self._local = local
            except RuntimeError:  # a hook of the user's own is in place: keep it
                pass

    def training_step(self, batch, batch_idx: int) -> None:
        args, kwargs = _as_arguments(batch)
        if self._local is not None:
            self._local.checks.clear()
        loss = self.guarded(*args, **kwargs)
        elbo_module = self.guarded.elbo_module
        explain = explainer(elbo_module.model, elbo_module.guide, args, kwargs)
        try:
            value = backward_and_agree(
                self.guarded, loss, self.manual_backward, self._local, explain
            )
        except NonFiniteLossError as error:
            self.policy.failed(error)  # raises once the redraws run out
            return
        self.policy.succeeded()
        optimizer, clip_norm = self.optimizers(), self._schedule.clip_norm
        if math.isfinite(clip_norm):
            # The schedule's total-norm rule by Lightning's own call, which under mixed
            # precision unscales the gradients first.
            self.clip_gradients(optimizer, clip_norm, gradient_clip_algorithm="norm")
        optimizer.step()
        optimizer.zero_grad()
        self.losses.append(value)
        self.log("loss", value, prog_bar=True)

    def on_fit_end(self) -> None:
        if self.trainer.is_global_zero:  # every rank skipped the same steps: say it once
            self.policy.warn(len(self.losses) + self.policy.total)

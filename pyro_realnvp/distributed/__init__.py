"""Data-parallel SVI: ranks and shards (``ranks``), how the ranks agree on a step
(``agreement``), ``DistributedDataParallel`` around Pyro's ELBO (``ddp``), checkpoints
(``checkpoints``) and, imported on demand since it needs the ``lightning`` extra,
Lightning's ``SVIModule`` (``pyro_realnvp.distributed.lightning``). All of it runs on
``fit``'s one loop, and works without a process group (one process, world size 1)."""

from ..errors import RankFailedError
from .agreement import FiniteStepFlag, setup_guide
from .checkpoints import load_checkpoint, max_parameter_divergence, save_checkpoint
from .ddp import DataParallelELBO, fit_distributed
from .ranks import (
    Blocks,
    data_plate,
    is_main_process,
    process_group,
    rank,
    seed_rank,
    shard,
    world_size,
)

__all__ = [
    "Blocks",
    "DataParallelELBO",
    "FiniteStepFlag",
    "RankFailedError",
    "data_plate",
    "fit_distributed",
    "is_main_process",
    "load_checkpoint",
    "max_parameter_divergence",
    "process_group",
    "rank",
    "save_checkpoint",
    "seed_rank",
    "setup_guide",
    "shard",
    "world_size",
]

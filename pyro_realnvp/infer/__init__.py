"""Training: ``fit`` and the one loop every trainer runs (``loop``: progress, schedule,
clipping, redraws, Ctrl-C), the captured fast path (``fast``), the non-finite policy
for Pyro's ELBOs (``finite``), iterate averaging (``averaging``), the particles'
objective (``losses``), the optimizer's flat buffer (``flat``) and when a run may end
early (``stopping``)."""

from ..errors import FastPathError, NonFiniteLossError, TrainingInterrupted
from .averaging import AVERAGE, AveragedStep
from .fast import MAX_PARTICLES, FastELBO, FastStep, particles_for
from .finite import FiniteELBO, explain_non_finite
from .flow_guide import FlowGuide
from .loop import History, RedrawPolicy, Schedule, Step, check_training_args, train
from .losses import (
    LATE_TAIL_GAIN,
    TAIL_BETA,
    particle_objective,
    tail_adaptive_weights,
    tail_schedule,
)
from .stopping import Converged
from .svi import CLIP_NORMS, NUM_STEPS, SVIStep, fit, fit_fast, fit_step

__all__ = [
    "AVERAGE",
    "CLIP_NORMS",
    "LATE_TAIL_GAIN",
    "MAX_PARTICLES",
    "NUM_STEPS",
    "TAIL_BETA",
    "AveragedStep",
    "Converged",
    "FastELBO",
    "FastPathError",
    "FastStep",
    "FiniteELBO",
    "FlowGuide",
    "History",
    "NonFiniteLossError",
    "RedrawPolicy",
    "SVIStep",
    "Schedule",
    "Step",
    "TrainingInterrupted",
    "check_training_args",
    "explain_non_finite",
    "fit",
    "fit_fast",
    "fit_step",
    "particle_objective",
    "particles_for",
    "tail_adaptive_weights",
    "tail_schedule",
    "train",
]

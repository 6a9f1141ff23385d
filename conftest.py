import importlib.util

import pyro
import pytest
import torch

# pyro_realnvp/lightning.py needs the optional `lightning` extra; without it, its doctest
# is not collected (tests/test_lightning.py skips itself).
collect_ignore = [] if importlib.util.find_spec("lightning") else ["pyro_realnvp/lightning.py"]
# Likewise benchmarks/zuko_guide.py needs the optional `bench` extra (zuko).
if importlib.util.find_spec("zuko") is None:
    collect_ignore.append("benchmarks/zuko_guide.py")

# Tests use small tensors: one intra-op thread avoids oversubscribing CI's two cores
# (a correlated-Gaussian fit took 69 s with two threads and 7.5 s with one).
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _fresh_pyro_state():
    """Every test and doctest starts with an empty param store and fixed seeds."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    yield
    pyro.clear_param_store()

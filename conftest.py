import importlib.util

import pyro
import pytest
import torch

import pyro_realnvp

# The lightning module needs the optional `lightning` extra; without it, its doctest is not
# collected (tests/distributed/test_lightning.py skips itself). The modules left at the
# paths of the flat layout are aliases that warn on import: nothing to collect there.
collect_ignore = [f"pyro_realnvp/{name}.py" for name in pyro_realnvp._MOVED]
if importlib.util.find_spec("lightning") is None:
    collect_ignore.append("pyro_realnvp/distributed/lightning.py")
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

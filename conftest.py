import pyro
import pytest


@pytest.fixture(autouse=True)
def _fresh_pyro_state():
    """Every test and doctest starts with an empty param store and fixed seeds."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    yield
    pyro.clear_param_store()

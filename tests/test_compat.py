"""Each private Pyro or torch name the package relies on, pinned."""

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine

from pyro_realnvp._compat import full_data_plates


def plate_model():
    with pyro.plate("data", 50, subsample_size=5) as index:
        pyro.sample("y", dist.Normal(0.0, 1.0), obs=torch.zeros(len(index)))
    return index


def test_full_data_plates_yields_every_index_with_scale_one():
    with full_data_plates():
        trace = poutine.trace(plate_model).get_trace()
    assert torch.equal(trace.nodes["_RETURN"]["value"], torch.arange(50))
    assert trace.nodes["y"]["scale"] == 1.0


def test_full_data_plates_restores_subsampling_on_exit():
    try:
        with full_data_plates():
            raise KeyError("leave the block by an error")
    except KeyError:
        pass
    trace = poutine.trace(plate_model).get_trace()
    assert len(trace.nodes["_RETURN"]["value"]) == 5
    assert trace.nodes["y"]["scale"] == 10.0


def test_an_explicit_subsample_is_left_alone():
    def model():
        with pyro.plate("data", 50, subsample=torch.tensor([3, 7])) as index:
            return index

    with full_data_plates():
        assert model().tolist() == [3, 7]

"""AutoRealNVP's options: each out-of-range value refused, naming the option."""

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_realnvp import AutoRealNVP


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"init_scale": 0.0}, "init_scale"),
        ({"init_scale": "laplace"}, "init_scale"),
        ({"num_layers": 0}, "num_layers"),
        ({"affine": "full"}, "affine"),
        ({"num_quantile_samples": 0}, "num_quantile_samples"),
        ({"num_quantile_samples": 100.0}, "num_quantile_samples"),
        ({"num_quantile_samples": True}, "num_quantile_samples"),
    ],
    ids=[
        "init_scale",
        "init_scale-name",
        "num_layers",
        "affine",
        "quantile-draws-zero",
        "quantile-draws-float",
        "quantile-draws-bool",
    ],
)
def test_bad_options_are_rejected(kwargs, message):
    wrong_type = kwargs.get("num_quantile_samples") in (100.0, True)  # not an integer
    with pytest.raises(TypeError if wrong_type else ValueError, match=message):
        AutoRealNVP(lambda: None, **kwargs)


def test_estimator_must_be_path_or_total():
    with pytest.raises(ValueError, match="estimator must be one of"):
        AutoRealNVP(print, estimator="stl")


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("num_layers", 1),
        ("num_layers", 2.5),
        ("num_layers", 0),
        ("num_layers", True),
        ("hidden_dims", (8, 0)),
        ("hidden_dims", 16),
        ("hidden_dims", (8.5,)),
        ("init_scale", 0.0),
        ("init_scale", float("nan")),
        ("init_scale", float("inf")),
        ("init_scale", "big"),
        ("init_scale", 1e30),
        ("scale_bound", -1.0),
        ("scale_bound", True),
        ("activation", "relu"),
        ("affine", "full"),
        ("estimator", "score"),
        ("start_rule", "laplace"),
        ("num_quantile_samples", 0),
        ("num_quantile_samples", 1),
    ],
)
def test_an_option_out_of_range_is_refused_naming_it(option, value):
    def model():
        pyro.sample("x", dist.Normal(0.0, 1.0))

    with pytest.raises((ValueError, TypeError), match=f"^{option} must be"):
        AutoRealNVP(model, **{option: value})


def test_an_odd_number_of_layers_warns_and_still_works():
    def model():
        pyro.sample("x", dist.Normal(torch.zeros(2), 1.0).to_event(1))

    with pytest.warns(UserWarning, match="num_layers=3 is odd"):
        guide = AutoRealNVP(model, num_layers=3)
    assert guide()["x"].shape == (2,)


@pytest.mark.parametrize(
    ("option", "value"), [("num_layers", np.int64(4)), ("hidden_dims", (np.int64(8),))]
)
def test_numpy_integers_are_integers(option, value):
    def model():
        pyro.sample("x", dist.Normal(torch.zeros(2), 1.0).to_event(1))

    assert AutoRealNVP(model, **{option: value})()["x"].shape == (2,)

import re

import numpy as np
import pytest
import torch

from pyro_realnvp.masks import (
    alternating_mask,
    bit_mask,
    check_int,
    check_mask,
    coupling_masks,
    half_mask,
)


@pytest.mark.parametrize(
    "make",
    [alternating_mask, half_mask, lambda dim, parity: bit_mask(dim, 1, parity)],
    ids=["alternating", "half", "bit"],
)
@pytest.mark.parametrize("dim", [2, 3, 7])
def test_parities_are_complements(make, dim):
    assert torch.equal(make(dim, 0) + make(dim, 1), torch.ones(dim))


@pytest.mark.parametrize("dim", [1, 2, 3, 5, 10])
@pytest.mark.parametrize("num_layers", [2, 4, 8])
def test_every_coordinate_is_transformed_by_each_pair(dim, num_layers):
    masks = coupling_masks(dim, num_layers)
    for first, second in zip(masks[::2], masks[1::2], strict=False):
        moved = (first == 0) | (second == 0)
        assert bool(moved.all())


def test_pairs_change_pattern_so_same_parity_coordinates_interact():
    masks = coupling_masks(6, 4)
    assert not torch.equal(masks[0], masks[2])


@pytest.mark.parametrize(("dim", "num_layers"), [(2, 2), (5, 6), (10, 8), (16, 8), (33, 12)])
def test_every_pair_of_coordinates_is_split_by_some_layer(dim, num_layers):
    masks = torch.stack(coupling_masks(dim, num_layers))
    split = (masks[:, :, None] != masks[:, None, :]).any(0)
    assert bool(split.fill_diagonal_(True).all())


def test_bit_zero_is_the_alternating_mask():
    assert torch.equal(bit_mask(7, 0), alternating_mask(7))
    assert torch.equal(bit_mask(7, 0, parity=1), alternating_mask(7, parity=1))


@pytest.mark.parametrize(
    ("mask", "dim", "message"),
    [
        (torch.tensor([1.0, 0.5]), None, "binary"),
        (torch.ones(2, 2), None, "one-dimensional"),
        (torch.tensor([1.0, 0.0, 1.0]), 4, r"shape \(4,\)"),
        (torch.ones(3), None, "identity"),
    ],
    ids=["non-binary", "2-d", "wrong-length", "all-ones"],
)
def test_check_mask_rejects_bad_masks(mask, dim, message):
    with pytest.raises(ValueError, match=message):
        check_mask(mask, dim)


def test_check_mask_accepts_integer_and_bool():
    assert check_mask(torch.tensor([True, False])).dtype == torch.get_default_dtype()
    assert check_mask(torch.tensor([0, 1])).tolist() == [0.0, 1.0]


@pytest.mark.parametrize(("dim", "num_layers"), [(0, 2), (3, 0)], ids=["dim", "layers"])
def test_coupling_masks_rejects_empty(dim, num_layers):
    with pytest.raises(ValueError, match="must be an integer >= 1, got 0"):
        coupling_masks(dim, num_layers)


@pytest.mark.parametrize(
    "value", [3, np.int64(3), torch.tensor(3).item()], ids=["int", "numpy", "item"]
)
def test_check_int_accepts_integers_of_any_integral_type(value):
    assert check_int("n", value, 1) == 3
    assert type(check_int("n", value, 1)) is int


BAD_INTS = {
    "float": (2.5, TypeError, "n must be an integer >= 1, got 2.5"),
    "whole-float": (3.0, TypeError, "n must be an integer >= 1, got 3.0"),
    "bool": (True, TypeError, "n must be an integer >= 1, got True"),
    "str": ("3", TypeError, "n must be an integer >= 1, got '3'"),
    "none": (None, TypeError, "n must be an integer >= 1, got None"),
    "too-small": (0, ValueError, "n must be an integer >= 1, got 0"),
}


@pytest.mark.parametrize(("value", "error", "message"), BAD_INTS.values(), ids=BAD_INTS)
def test_check_int_names_the_argument_and_the_value(value, error, message):
    with pytest.raises(error, match=f"^{re.escape(message)}$"):
        check_int("n", value, 1)

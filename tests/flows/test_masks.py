import re

import numpy as np
import pytest
import torch

from pyro_realnvp._internal.checks import check_int
from pyro_realnvp.flows.masks import (
    alternating_mask,
    bit_mask,
    coupling_masks,
    half_mask,
    separating_codes,
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


def reads_in_both_directions(masks: list[torch.Tensor]) -> torch.Tensor:
    """``[i, j]``: some layer moves ``i`` reading ``j``, and some layer the reverse."""
    masks = torch.stack(masks).bool()
    reads = (~masks[:, :, None] & masks[:, None, :]).any(0)
    return reads & reads.T


@pytest.mark.parametrize(
    ("sizes", "num_layers"),
    [((1, 9), 6), ((1, 1, 20), 6), ((2, 5, 30), 6), ((1, 1, 1, 1, 12), 6), ((1, 40), 2)],
)
def test_groups_keep_small_sites_apart_from_every_other_coordinate(sizes, num_layers):
    # Too few layers to separate every pair, yet codes enough for all but the largest
    # group: only its own coordinates may share.
    dim, num_codes = sum(sizes), 2 ** ((num_layers + 1) // 2)
    assert dim - max(sizes) < num_codes < dim
    group = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    across = group[:, None] != group[None, :]
    masks = coupling_masks(dim, num_layers, groups=sizes)
    assert bool(reads_in_both_directions(masks)[across].all())
    for first, second in zip(masks[::2], masks[1::2], strict=False):
        assert torch.equal(first + second, torch.ones(dim))


def test_by_index_six_layers_keep_the_funnels_v_beside_one_x():
    both = reads_in_both_directions(coupling_masks(10, 6))
    assert not bool(both[0, 8])  # what groups=[1, 9] mends
    assert bool(reads_in_both_directions(coupling_masks(10, 6, groups=[1, 9]))[0, 1:].all())


def test_one_group_changes_nothing():
    for num_layers in (6, 8):
        for default, grouped in zip(
            coupling_masks(10, num_layers),
            coupling_masks(10, num_layers, groups=[10]),
            strict=True,
        ):
            assert torch.equal(default, grouped)


def pairs_of_layers_splitting(masks: list[torch.Tensor]) -> torch.Tensor:
    """``[i, j]``: in how many pairs of layers one of ``i``, ``j`` is moved reading the other."""
    firsts = torch.stack(masks[::2])
    return (firsts[:, :, None] != firsts[:, None, :]).sum(0)


@pytest.mark.parametrize(("num_layers", "least"), [(6, 2), (8, 2)])
def test_a_funnels_scale_is_read_by_most_pairs_of_layers(num_layers, least):
    split = pairs_of_layers_splitting(coupling_masks(10, num_layers, groups=[1, 9]))
    assert int(split[0, 1:].min()) >= least
    by_index = pairs_of_layers_splitting(coupling_masks(10, num_layers))
    assert int(by_index[0, 1:].min()) < least  # what the groups mend


def test_a_bananas_coordinates_are_split_by_every_pair_of_layers():
    split = pairs_of_layers_splitting(coupling_masks(8, 6, groups=[1, 1, 6]))
    assert int(split[0, 1]) == 3
    assert int(pairs_of_layers_splitting(coupling_masks(8, 6))[0, 1]) == 1  # by index


def test_a_group_spreads_over_its_codes_before_sharing():
    codes = separating_codes([1, 9], 16)  # eleven codes two or more bits from v's
    assert len(set(codes[1:])) == 9
    assert min((codes[0] ^ code).bit_count() for code in codes[1:]) >= 2


def test_separating_codes_share_within_a_group_then_in_turn():
    assert separating_codes([1, 9], 8) == [0, 7, 3, 5, 6, 7, 3, 5, 6, 7]
    assert separating_codes([3, 3, 3], 4) == [0, 1, 2, 3, 3, 3, 0, 1, 2]  # no code left
    assert separating_codes([4], 4) == [0, 1, 2, 3]  # alone: by index


@pytest.mark.parametrize(
    ("groups", "error"),
    [([1, 8], ValueError), ([0, 10], ValueError), ([2.5, 7.5], TypeError)],
    ids=["sum", "zero", "float"],
)
@pytest.mark.parametrize("num_layers", [6, 8], ids=["too-few-layers", "enough-layers"])
def test_bad_groups_are_refused_naming_them(groups, error, num_layers):
    with pytest.raises(error, match="groups"):
        coupling_masks(10, num_layers, groups=groups)


def test_bit_zero_is_the_alternating_mask():
    assert torch.equal(bit_mask(7, 0), alternating_mask(7))
    assert torch.equal(bit_mask(7, 0, parity=1), alternating_mask(7, parity=1))


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


BAD_MASK_ARGS = {
    "alternating-dim-0": (lambda: alternating_mask(0), ValueError, "dim must be an integer >= 1"),
    "alternating-dim-float": (lambda: alternating_mask(2.5), TypeError, "dim must be an integer"),
    "alternating-parity-2": (lambda: alternating_mask(4, 2), ValueError, "parity must be 0 or 1"),
    "half-dim-negative": (lambda: half_mask(-2), ValueError, "dim must be an integer >= 1"),
    "half-parity-float": (lambda: half_mask(4, 0.5), TypeError, "parity must be 0 or 1"),
    "half-parity-bool": (lambda: half_mask(4, True), TypeError, "parity must be 0 or 1"),
    "bit-negative": (lambda: bit_mask(4, -1), ValueError, "bit must be an integer >= 0"),
    "bit-float": (lambda: bit_mask(4, 1.5), TypeError, "bit must be an integer >= 0"),
    "bit-parity-3": (lambda: bit_mask(4, 0, 3), ValueError, "parity must be 0 or 1"),
    "codes-0": (lambda: separating_codes([2, 2], 0), ValueError, "num_codes must be"),
    "codes-float": (lambda: separating_codes([2, 2], 4.0), TypeError, "num_codes must be"),
    "sizes-negative": (lambda: separating_codes([2, -1], 4), ValueError, "sizes must be"),
    "sizes-float": (lambda: separating_codes([2, 1.5], 4), TypeError, "sizes must be"),
    "sizes-int": (lambda: separating_codes(3, 4), TypeError, "sizes must be"),
}


@pytest.mark.parametrize(("call", "error", "message"), BAD_MASK_ARGS.values(), ids=BAD_MASK_ARGS)
def test_mask_helpers_name_a_bad_argument(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_mask_helpers_accept_numpy_integers():
    assert torch.equal(alternating_mask(np.int64(3), np.int32(1)), torch.tensor([0.0, 1.0, 0.0]))
    assert separating_codes((np.int64(1), 1), np.int64(2)) == [0, 1]

"""Ranks and shards in one process: data plates, shards, blocks, the process group's exit."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pyro
import pytest
import torch
import torch.distributed as torch_dist
from helpers import free_port
from torch.utils.data import DistributedSampler

from pyro_realnvp.distributed import (
    Blocks,
    data_plate,
    ranks,
    shard,
)


def test_data_plate_scales_shard_to_full_data():
    y = torch.zeros(5)

    def model():
        with data_plate("data", num_data=20, shard_size=5, batch_size=2) as idx:
            pyro.sample("y", pyro.distributions.Normal(0.0, 1.0), obs=y[idx])

    trace = pyro.poutine.trace(model).get_trace()
    assert trace.nodes["y"]["scale"] == 10.0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"rank": 2, "world_size": 2}, "rank must be"), ({"rank": 0, "world_size": 9}, "cannot")],
    ids=["rank-out-of-range", "more-ranks-than-rows"],
)
def test_shard_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        shard(torch.zeros(4), **kwargs)


@pytest.mark.parametrize("rank", [0, 1], ids=["rank-0", "rank-1"])
def test_blocks_dealt_by_a_distributed_sampler_are_the_shards(rank):
    x, y = torch.randn(10, 2), torch.arange(10)
    blocks = Blocks(x, y, block_size=5)
    sampler = DistributedSampler(blocks, num_replicas=2, rank=rank, shuffle=False)
    (index,) = list(sampler)
    for got, expected in zip(blocks[index], shard(x, y, rank=rank, world_size=2), strict=True):
        assert torch.equal(got, expected)


@pytest.mark.parametrize(
    ("tensors", "block_size", "match"),
    [((), 2, "at least one"), ((torch.zeros(3), torch.zeros(4)), 2, "share"),
     ((torch.zeros(3),), 0, "block_size")],
    ids=["no-tensors", "unequal-lengths", "empty-blocks"],
)  # fmt: skip
def test_blocks_reject_bad_arguments(tensors, block_size, match):
    with pytest.raises(ValueError, match=match):
        Blocks(*tensors, block_size=block_size)


@pytest.mark.parametrize(
    "size", [np.int64(2), torch.tensor(2)], ids=["numpy-integer", "0-d-integer-tensor"]
)
def test_integer_like_sizes_are_taken(size):
    assert len(Blocks(torch.zeros(4), block_size=size)) == 2
    assert len(shard(torch.zeros(4), rank=size - 1, world_size=size)[0]) == 2
    with data_plate("data", num_data=4, shard_size=size, batch_size=size) as idx:
        assert idx.dtype == torch.long


@pytest.mark.parametrize("value", [2.0, True], ids=["float", "bool"])
def test_a_size_that_is_not_an_integer_is_refused_by_name(value):
    with pytest.raises(TypeError, match="world_size must be an integer"):
        shard(torch.zeros(4), rank=0, world_size=value)


def test_process_group_releases_the_gil_after_destroying_its_group(monkeypatch):
    # A gloo worker still freeing a collective's tensors at finalization aborts the
    # process: the group's exit must leave it time, after the group is gone.
    env = {"RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(free_port())}  # fmt: skip
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    slept = []
    record = SimpleNamespace(sleep=lambda s: slept.append((s, torch_dist.is_initialized())))
    monkeypatch.setattr(ranks, "time", record)  # ranks' own name only, not time.sleep
    with ranks.process_group("gloo") as (rank, world_size):
        assert (rank, world_size) == (0, 1)
        assert torch_dist.is_initialized()
        torch_dist.all_reduce(torch.ones(2))
    assert slept == [(ranks.WORKERS_DRAIN_S, False)]


def test_process_group_alone_neither_creates_nor_waits(monkeypatch):
    for name in ("RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    slept = []
    monkeypatch.setattr(ranks, "time", SimpleNamespace(sleep=slept.append))
    with ranks.process_group() as (rank, world_size):
        assert (rank, world_size) == (0, 1)
        assert not torch_dist.is_initialized()
    assert slept == []

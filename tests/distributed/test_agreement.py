"""How ranks agree on a step, in one process: the guarded ELBO, the flag, the messages."""

import pyro
import pyro.distributions as dist
import pytest
from pyro.infer import Trace_ELBO
from pyro.infer.autoguide import AutoNormal

from pyro_realnvp import NonFiniteLossError, RankFailedError
from pyro_realnvp.distributed.agreement import (
    FiniteStepFlag,
    GuardedELBO,
    describe,
    raise_if_any_raised,
)


def test_a_model_that_raises_gives_a_zero_loss_that_reaches_every_parameter():
    def model(fail):
        pyro.sample("x", dist.Normal(0.0, 1.0))
        if fail:
            raise RuntimeError("corrupt shard")

    guide = AutoNormal(model)
    with pyro.poutine.block():
        guide(False)
    guarded = GuardedELBO(Trace_ELBO()(model, guide))
    loss = guarded(True)
    assert isinstance(guarded.error, RuntimeError)
    assert loss.item() == 0.0
    loss.backward()  # every parameter joins the backward pass, with a zero gradient
    assert all(p.grad is not None and not p.grad.any() for p in guarded.parameters())
    assert guarded(False).item() != 0.0
    assert guarded.error is None


def test_a_failed_step_raises_with_what_each_rank_reported():
    flag = FiniteStepFlag(loss=float("nan"), ok=False)
    with pytest.raises(NonFiniteLossError, match=r"rank\(s\) \[0\] \(rank 0: a NaN\)"):
        flag.mean_loss(grads_finite=True, report=lambda: {"non_finite": "a NaN"})
    flag = FiniteStepFlag(loss=1.0, ok=False)
    with pytest.raises(RankFailedError, match="rank 0 raised ValueError"):
        flag.mean_loss(grads_finite=True, report=lambda: {"raised": "ValueError('bad')"})
    with pytest.raises(NonFiniteLossError, match="the sum overflowed"):
        FiniteStepFlag(loss=1.0, ok=True).mean_loss(grads_finite=False)


def test_an_error_is_described_without_pyros_trace_table():
    error = ValueError("Shape mismatch at site 'y'\nTrace Shapes:\n  Param Sites: ...")
    assert describe(error) == "ValueError(\"Shape mismatch at site 'y'\")"


def test_a_rank_that_raised_makes_every_rank_raise_naming_it():
    raise_if_any_raised(None, "set-up")  # nobody raised: nothing happens
    with pytest.raises(RankFailedError, match="rank 0 raised KeyError.*during set-up"):
        raise_if_any_raised(KeyError("w"), "set-up")

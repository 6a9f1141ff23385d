"""Bad-input battery: data-parallel training in one process, without a process group.

``shard``, ``data_plate``, ``Blocks``, checkpoints, ``fit_distributed`` and
``DataParallelELBO`` given bad arguments, missing or corrupt files, shapes that do not
match, parameters outside any module and models that raise. Each table drives one test
function; each row (one test id) is one case. A case asserts the ideal answer: an error
that names the argument, the file or the parameter (and the fix where there is one), a
warning, or the correct result; and that a refused call lost nothing. Where the package's
answer is not yet that, the row stays, marked ``xfail(strict=True)`` with ``"BAD: ..."``
or ``"WEAK: ..."`` saying what it does now (``GAPS``).
"""

import re

import pyro
import pyro.distributions as dist
import pytest
import torch
from helpers import poisonable_model
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoNormal
from torch.optim.optimizer import register_optimizer_step_pre_hook

from battery.cases import Cases
from pyro_realnvp import (
    AutoRealNVP,
    NonFiniteLossError,
    RankFailedError,
    TrainingInterrupted,
)
from pyro_realnvp.distributed import (
    Blocks,
    DataParallelELBO,
    data_plate,
    fit_distributed,
    load_checkpoint,
    save_checkpoint,
    shard,
)
from pyro_realnvp.infer import loop

TINY = {"num_layers": 2, "hidden_dims": (8,)}
QUICK = {"num_steps": 2, "progress": False}
ROWS = torch.arange(10.0)

#: Every case whose answer is not yet the ideal, by id: what the package does now. Each is
#: marked ``xfail(strict=True)`` by :func:`case`, so a fix shows up as an XPASS.
GAPS: dict[str, str] = {}

case = Cases(GAPS)


def one_site():
    pyro.sample("x", dist.Normal(0.0, 1.0))
    pyro.sample("y", dist.Normal(0.0, 1.0), obs=torch.tensor(0.5))


def store_values():
    return {name: p.detach().clone() for name, p in pyro.get_param_store().named_parameters()}


# --- shard ----------------------------------------------------------------------------------

SHARD = [
    case((ROWS,), {"rank": -1, "world_size": 2}, ValueError, r"rank must be in \[0, 2\), got -1",
         id="shard-rank-negative"),
    case((ROWS,), {"rank": 2, "world_size": 2}, ValueError, r"rank must be in \[0, 2\), got 2",
         id="shard-rank-equals-world_size"),
    case((ROWS,), {"rank": 0, "world_size": 0}, ValueError, "world_size", id="shard-world_size-0"),
    case((), {"rank": 0, "world_size": 1}, ValueError, "at least one tensor", id="shard-nothing"),
    case((ROWS, ROWS[:5]), {}, ValueError, r"share their first dimension.*\{10, 5\}|\{5, 10\}",
         id="shard-lengths-differ"),
    case((ROWS[:1],), {"rank": 0, "world_size": 2}, ValueError, "cannot shard 1 rows over 2",
         id="shard-fewer-rows-than-ranks"),
    case((torch.tensor(1.0),), {}, TypeError, "0-d", id="shard-a-scalar"),
    case(([1, 2, 3],), {"rank": 0, "world_size": 2}, TypeError, "tensor", id="shard-a-list"),
    case((ROWS,), {"rank": 1.0, "world_size": 2}, TypeError, "rank", id="shard-rank-float"),
]  # fmt: skip


@pytest.mark.parametrize(("tensors", "kwargs", "error", "message"), SHARD)
def test_shard_refuses_bad_arguments_by_name(tensors, kwargs, error, message):
    with pytest.raises(error, match=message):
        shard(*tensors, **kwargs)


SHARDS = [
    case(10, 1, id="one-process-takes-everything"),
    case(5, 2, id="uneven-rows"),
    case(7, 3, id="three-uneven-ranks"),
]


@pytest.mark.parametrize(("rows", "world_size"), SHARDS)
def test_the_shards_of_every_rank_are_the_rows_in_order(rows, world_size):
    x = torch.arange(float(rows))
    pieces = [shard(x, rank=r, world_size=world_size)[0] for r in range(world_size)]
    assert torch.equal(torch.cat(pieces), x)
    assert max(len(p) for p in pieces) - min(len(p) for p in pieces) <= 1


# --- Blocks -----------------------------------------------------------------------------------

BLOCKS = [
    case((ROWS,), 0, ValueError, "block_size must be at least 1", id="Blocks-block_size-0"),
    case((ROWS,), 2.5, TypeError, "block_size", id="Blocks-block_size-float"),
    case((), 2, ValueError, "at least one tensor", id="Blocks-nothing"),
    case((ROWS, ROWS[:3]), 2, ValueError, "share their first dimension", id="Blocks-lengths"),
]


@pytest.mark.parametrize(("tensors", "block_size", "error", "message"), BLOCKS)
def test_blocks_refuse_bad_arguments_by_name(tensors, block_size, error, message):
    with pytest.raises(error, match=message):
        Blocks(*tensors, block_size=block_size)


@pytest.mark.parametrize("index", [case(4, id="Blocks-index-past-end")])
def test_a_block_past_the_end_is_an_index_error_saying_how_many_there_are(index):
    with pytest.raises(IndexError, match=f"block {index} of 4"):
        Blocks(ROWS, block_size=3)[index]


@pytest.mark.parametrize("_", [case(None, id="Blocks-larger-than-data")])
def test_a_block_larger_than_the_data_is_all_of_it(_):
    blocks = Blocks(ROWS, block_size=100)
    assert len(blocks) == 1
    assert torch.equal(blocks[0][0], ROWS)


# --- data_plate -------------------------------------------------------------------------------

DATA_PLATES = [
    case((10, 0), {}, ValueError, "shard_size=0", id="data_plate-shard_size-0"),
    case((3, 5), {}, ValueError, "shard_size=5, num_data=3", id="data_plate-num_data-too-small"),
    case((10, 5), {"batch_size": 0}, ValueError, "batch_size", id="data_plate-batch_size-0"),
    case((10, 5.0), {}, TypeError, "shard_size", id="data_plate-shard_size-float"),
    case((10, 5), {"batch_size": 2.5}, TypeError, "batch_size", id="data_plate-batch_size-float"),
]


@pytest.mark.parametrize(("sizes", "kwargs", "error", "message"), DATA_PLATES)
def test_data_plate_refuses_bad_sizes_by_name(sizes, kwargs, error, message):
    with pytest.raises(error, match=message):
        data_plate("data", *sizes, **kwargs)


# --- save_checkpoint --------------------------------------------------------------------------


@pytest.mark.parametrize("_", [case(None, id="save-into-a-missing-directory")])
def test_saving_into_a_missing_directory_names_it(_, tmp_path):
    pyro.param("a", torch.ones(2))
    with pytest.raises(FileNotFoundError, match="missing"):
        save_checkpoint(tmp_path / "missing" / "ckpt.pt")


@pytest.mark.parametrize("_", [case(None, id="save-onto-a-directory")])
def test_a_failed_save_leaves_no_partial_file_behind(_, tmp_path):
    pyro.param("a", torch.ones(2))
    (tmp_path / "ckpt").mkdir()
    with pytest.raises(OSError, match="ckpt"):
        save_checkpoint(tmp_path / "ckpt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


@pytest.mark.parametrize("_", [case(None, id="save-optim-not-pyro")])
def test_an_optimizer_that_is_not_pyros_is_refused_before_anything_is_written(_, tmp_path):
    pyro.param("a", torch.ones(2))
    optimizer = torch.optim.Adam([torch.zeros(1, requires_grad=True)])
    with pytest.raises(TypeError, match="optim"):
        save_checkpoint(tmp_path / "ckpt.pt", optimizer)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("_", [case(None, id="save-empty-store")])
def test_saving_an_empty_param_store_is_warned_about(_, tmp_path):
    with pytest.warns(UserWarning, match="empty|no parameter"):
        save_checkpoint(tmp_path / "ckpt.pt")


# --- load_checkpoint --------------------------------------------------------------------------


def _junk(path):
    path.write_bytes(b"not a checkpoint at all")


def _empty(path):
    path.write_bytes(b"")


def _truncated(path):
    pyro.param("a", torch.ones(100))
    save_checkpoint(path)
    pyro.clear_param_store()
    path.write_bytes(path.read_bytes()[:200])


def _tensor(path):
    torch.save(torch.zeros(3), path)


def _state_dict(path):
    torch.save(torch.nn.Linear(2, 2).state_dict(), path)


def _nothing(path):
    pass


NOT_CHECKPOINTS = [
    case(_nothing, id="load-missing"),
    case(_junk, id="load-junk-bytes"),
    case(_empty, id="load-empty-file"),
    case(_truncated, id="load-truncated"),
    case(_tensor, id="load-a-tensor"),
    case(_state_dict, id="load-a-state_dict"),
]


@pytest.mark.parametrize("write", NOT_CHECKPOINTS)
def test_a_file_that_is_not_a_checkpoint_is_refused_naming_the_file(write, tmp_path):
    path = tmp_path / "ckpt.pt"
    write(path)
    with pytest.raises((ValueError, RuntimeError, OSError), match=re.escape(str(path))):
        load_checkpoint(path)


@pytest.mark.parametrize("_", [case(None, id="load-not-a-checkpoint-keeps-the-store")])
def test_a_refused_file_leaves_the_param_store_as_it_was(_, tmp_path):
    pyro.param("a", torch.ones(2))
    _tensor(tmp_path / "ckpt.pt")
    before = store_values()
    with pytest.raises(Exception):  # noqa: B017, PT011 - the type is the case above's
        load_checkpoint(tmp_path / "ckpt.pt")
    assert store_values().keys() == before.keys()
    assert all(torch.equal(v, before[k]) for k, v in store_values().items())


def _saved(tmp_path, **shapes):
    for name, shape in shapes.items():
        pyro.param(name, torch.ones(shape))
    save_checkpoint(tmp_path / "ckpt.pt")
    pyro.clear_param_store()
    return tmp_path / "ckpt.pt"


@pytest.mark.parametrize("_", [case(None, id="load-shape-mismatch")])
def test_a_checkpoint_of_another_shape_is_refused_naming_the_parameter(_, tmp_path):
    path = _saved(tmp_path, w=3)
    pyro.param("w", torch.zeros(2))
    with pytest.raises(ValueError, match=r"'w' has shape \(3,\), the guide's has \(2,\)"):
        load_checkpoint(path)


@pytest.mark.parametrize("_", [case(None, id="load-refused-half-loaded")])
def test_a_refused_checkpoint_leaves_every_parameter_as_it_was(_, tmp_path):
    path = _saved(tmp_path, a=2, w=3)
    pyro.param("a", torch.zeros(2))
    pyro.param("w", torch.zeros(2))
    with pytest.raises(ValueError, match="'w'"):
        load_checkpoint(path)
    assert torch.equal(pyro.param("a").detach(), torch.zeros(2))


@pytest.mark.parametrize("_", [case(None, id="load-optim-file-missing")])
def test_loading_an_optimizer_state_that_was_not_saved_is_warned_about(_, tmp_path):
    path = _saved(tmp_path, a=2)
    with pytest.warns(UserWarning, match=r"ckpt\.pt\.optim"):
        load_checkpoint(path, pyro.optim.Adam({"lr": 0.1}))


@pytest.mark.parametrize("_", [case(None, id="load-restores-after-training")])
def test_a_checkpoint_restores_a_guide_that_trained_on(_, tmp_path):
    guide = AutoRealNVP(one_site, **TINY)
    fit_distributed(one_site, guide, **QUICK)
    save_checkpoint(tmp_path / "ckpt.pt")
    before, median = store_values(), guide.median()
    fit_distributed(one_site, guide, num_steps=3, lr=0.1, progress=False)
    load_checkpoint(tmp_path / "ckpt.pt")
    assert all(torch.equal(v, before[k]) for k, v in store_values().items())
    assert all(torch.equal(v, median[k]) for k, v in guide.median().items())


# --- fit_distributed and DataParallelELBO -----------------------------------------------------


def loose_model():
    shift = pyro.param("shift", torch.tensor(0.0))
    pyro.sample("x", dist.Normal(shift, 1.0))


def loose_guide():
    pyro.sample("x", dist.Normal(pyro.param("guide_loc", torch.tensor(0.0)), 1.0))


def fit_loose_model():
    fit_distributed(loose_model, AutoRealNVP(loose_model, **TINY), **QUICK)


def fit_loose_guide():
    fit_distributed(one_site, loose_guide, **QUICK)


def svi_loose_model():
    guide = AutoNormal(loose_model)
    SVI(loose_model, guide, pyro.optim.Adam({"lr": 0.1}), DataParallelELBO()).step()


LOOSE = [
    case(fit_loose_model, r"\['shift'\]", id="fit_distributed-loose-model-param"),
    case(fit_loose_guide, r"\['guide_loc'\]", id="fit_distributed-loose-guide-param"),
    case(svi_loose_model, r"\['shift'\]", id="DataParallelELBO-loose-model-param"),
]


@pytest.mark.parametrize(("run", "name"), LOOSE)
def test_parameters_outside_any_module_are_refused_naming_them_and_the_fix(run, name):
    with pytest.raises(ValueError, match=name + ".*in no torch module.*PyroParam"):
        run()


BAD_OBJECTS = [
    case(lambda: DataParallelELBO("trace"), "elbo", id="DataParallelELBO-a-string"),
    case(lambda: DataParallelELBO(Trace_ELBO), "elbo", id="DataParallelELBO-the-class"),
    case(
        lambda: fit_distributed(one_site, AutoNormal(one_site), loss=Trace_ELBO, **QUICK),
        "loss",
        id="fit_distributed-loss-the-class",
    ),
    case(
        lambda: fit_distributed(None, AutoNormal(one_site), **QUICK),
        "model",
        id="fit_distributed-model-None",
    ),
    case(
        lambda: fit_distributed(one_site, None, **QUICK), "guide", id="fit_distributed-guide-None"
    ),
]


@pytest.mark.parametrize(("call", "name"), BAD_OBJECTS)
def test_what_is_not_a_model_guide_or_elbo_is_refused_by_name(call, name):
    with pytest.raises(TypeError, match=name):
        call()


MISUSED = [
    case(
        lambda: fit_distributed(one_site, AutoNormal(one_site), num_particles=0, **QUICK),
        ValueError,
        "num_particles must be an integer >= 1",
        id="fit_distributed-num_particles-0",
    ),
    case(
        lambda: fit_distributed(one_site, AutoNormal(one_site), num_step=5, progress=False),
        RankFailedError,
        "unexpected keyword argument 'num_step'",
        id="fit_distributed-misspelt-option",
    ),
    case(
        lambda: fit_distributed(needs_data, AutoNormal(needs_data), **QUICK),
        RankFailedError,
        "missing 1 required positional argument: 'y'",
        id="fit_distributed-missing-model-argument",
    ),
]


def needs_data(y):
    x = pyro.sample("x", dist.Normal(0.0, 1.0))
    with data_plate("data", num_data=10, shard_size=len(y)):
        pyro.sample("y", dist.Normal(x, 1.0), obs=y)


@pytest.mark.parametrize(("call", "error", "message"), MISUSED)
def test_a_misused_fit_distributed_names_the_argument(call, error, message):
    with pytest.raises(error, match=message):
        call()


def raises_at_once():
    raise ValueError("bad row 3")


@pytest.mark.parametrize("_", [case(None, id="raises-at-set-up-trace-shapes")])
def test_a_model_that_raises_at_set_up_is_named_with_its_own_message_only(_):
    guide = AutoRealNVP(raises_at_once, **TINY)
    with pytest.raises(RankFailedError, match=r"rank 0 raised ValueError\('bad row 3'\)"):
        fit_distributed(raises_at_once, guide, **QUICK)


def raising_after(calls_before):
    calls = []

    def model():
        calls.append(None)
        if len(calls) > calls_before:
            raise KeyError("row 7")
        pyro.sample("x", dist.Normal(0.0, 1.0))

    return model


@pytest.mark.parametrize("_", [case(None, id="raises-in-a-step")])
def test_a_model_that_raises_in_a_step_is_named_and_nothing_is_updated(_):
    model = raising_after(calls_before=3)
    with pytest.raises(RankFailedError, match="rank 0 raised KeyError.*no rank updated"):
        fit_distributed(model, AutoNormal(model), num_steps=5, progress=False)


def raising_once_told(state):
    def model():
        if state["raise"]:
            raise KeyError("row 7")
        pyro.sample("x", dist.Normal(0.0, 1.0))

    return model


@pytest.mark.parametrize("_", [case(None, id="raises-in-a-step-keeps-the-parameters")])
def test_a_model_that_raises_in_a_step_leaves_the_parameters_of_the_last_step(_):
    state = {"raise": False}
    model = raising_once_told(state)
    guide = AutoNormal(model)
    fit_distributed(model, guide, num_steps=1, progress=False)
    before = store_values()
    state["raise"] = True
    with pytest.raises(RankFailedError):
        fit_distributed(model, guide, num_steps=5, progress=False)
    assert all(torch.equal(v, before[k]) for k, v in store_values().items())
    assert all(p.grad is None for _, p in pyro.get_param_store().named_parameters())


@pytest.mark.parametrize("_", [case(None, id="poisoned-after-set-up")])
def test_a_non_finite_likelihood_is_named_by_site_and_updates_nothing(_):
    state = {"poison": False}
    model = poisonable_model(state)
    guide = AutoRealNVP(model, **TINY)
    fit_distributed(model, guide, **QUICK)
    before = store_values()
    state["poison"] = True
    with pytest.raises(NonFiniteLossError, match=r"rank\(s\) \[0\].*\['likelihood'\]"):
        fit_distributed(model, guide, **QUICK)
    assert all(torch.equal(v, before[k]) for k, v in store_values().items())


def nan_factor():
    x = pyro.sample("x", dist.Normal(0.0, 1.0))
    pyro.factor("bad", x * float("nan"))


@pytest.mark.parametrize("_", [case(None, id="nan-from-start")])
def test_a_model_non_finite_from_the_start_is_named_by_site(_):
    with pytest.raises((NonFiniteLossError, RankFailedError), match="'bad'"):
        fit_distributed(nan_factor, AutoNormal(nan_factor), **QUICK)


def interrupt_in_step(monkeypatch, k):
    """Raise ``KeyboardInterrupt`` in step ``k`` of the loop (1-based), after its backward
    pass, before its update: the store's values as step ``k - 1`` left them (filled in
    then), and the hook's handle."""
    calls, armed, before = [], [], {}
    real = loop._step_with_redraws

    def counting(step, policy):
        calls.append(None)
        if len(calls) == k:
            before.update(store_values())
            armed.append(True)
        return real(step, policy)

    def hook(optimizer, args, kwargs):
        if armed:
            armed.clear()
            raise KeyboardInterrupt

    monkeypatch.setattr(loop, "_step_with_redraws", counting)
    return before, register_optimizer_step_pre_hook(hook)


@pytest.mark.parametrize("_", [case(None, id="interrupted")])
def test_an_interrupted_fit_distributed_keeps_the_history_and_the_last_steps_values(
    monkeypatch, _
):
    guide = AutoRealNVP(one_site, **TINY)
    before, handle = interrupt_in_step(monkeypatch, k=3)
    try:
        with pytest.raises(TrainingInterrupted) as error:
            fit_distributed(one_site, guide, num_steps=10, progress=False)
    finally:
        handle.remove()
    assert len(error.value.history) == 2
    assert all(torch.equal(v, before[k]) for k, v in store_values().items())
    assert all(p.grad is None for _, p in pyro.get_param_store().named_parameters())


case.check()

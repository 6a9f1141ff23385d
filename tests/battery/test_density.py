"""Bad-input battery: density estimation (fit_density, flow_distribution, anomaly_scores,
dequantize, bits_per_dim).

Each table drives one test function; each row (one test id) is one case. A case asserts
the ideal answer: an error that names the argument (``data``, ``context``,
``valid_data``, ...) and, where there is one, the fix; a warning; or the correct result;
and that a refused or interrupted fit moved no parameter. Where the package's answer is
not yet that, the row stays, marked ``xfail(strict=True)`` with ``"BAD: ..."`` or
``"WEAK: ..."`` saying what it does now (``GAPS``).
"""

import warnings

import numpy as np
import pyro.distributions as dist
import pytest
import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_pre_hook

from battery.cases import Cases
from pyro_realnvp import (
    ConditionalRealNVP,
    NonFiniteLossError,
    RealNVP,
    TrainingInterrupted,
    anomaly_scores,
    bits_per_dim,
    dequantize,
    fit_density,
    flow_distribution,
)
from pyro_realnvp.infer import loop

TINY = {"num_layers": 2, "hidden_dims": (8,)}
QUICK = {"num_steps": 3, "progress": False}

#: Every case whose answer is not yet the ideal, by id: what the package does now. Each is
#: marked ``xfail(strict=True)`` by :func:`case`, so a fix shows up as an XPASS.
GAPS: dict[str, str] = {}

case = Cases(GAPS)


def flow(dim=2):
    return RealNVP(dim, **TINY)


def conditional_flow():
    return ConditionalRealNVP(2, context_dim=3, **TINY)


def data(rows=20, width=2, seed=0):
    return torch.randn(rows, width, generator=torch.Generator().manual_seed(seed))


def with_row(value, at=3):
    rows = data()
    rows[at, 1] = value
    return rows


def snapshot(module):
    return [p.detach().clone() for p in module.parameters()]


def unchanged(before, module):
    return all(torch.equal(a, b) for a, b in zip(before, module.parameters(), strict=True))


def nan_flow():
    poisoned = flow()
    with torch.no_grad():
        poisoned.layers[0].net[-1].bias.fill_(float("nan"))
    return poisoned


# --- Data fit_density refuses -------------------------------------------------------------

BAD_DATA = [
    case(torch.randn(20), ValueError, r"data must have shape \(N, 2\), got \(20,\)", id="1-d"),
    case(torch.randn(20, 2, 1), ValueError, r"data must have shape \(N, 2\)", id="3-d"),
    case(torch.randn(20, 3), ValueError, r"data must have shape \(N, 2\)", id="wrong-width"),
    case(torch.zeros(0, 2), ValueError, "data must have at least one row", id="no-rows"),
    case(with_row(float("nan")), ValueError, r"data has 1 row.*NaN.*\[3\]", id="nan-row"),
    case(with_row(-float("inf")), ValueError, r"data has 1 row.*infinite", id="-inf-row"),
    case(torch.randint(0, 9, (20, 2)), ValueError, "integer dtype.*dequantize", id="int-dtype"),
    case(data() > 0, ValueError, r"data .*torch\.bool", id="bool-dtype"),
    case(data().to(torch.complex64), ValueError, r"^(?!.*integer).*complex", id="complex-dtype"),
    case(data().round(), ValueError, "whole numbers.*dequantize", id="whole-number-floats"),
    case(data() * 1e10, ValueError, "reach .*e\\+10.*standardize", id="whole-at-1e10"),
    case(None, TypeError, "data must be a tensor", id="none"),
    case("data.csv", TypeError, "data must be a tensor", id="string"),
    case([[0.1, 0.2], [0.3]], TypeError, "data must be a tensor", id="ragged-list"),
]


@pytest.mark.parametrize(("rows", "error", "message"), BAD_DATA)
def test_bad_data_are_refused_by_name(rows, error, message):
    with pytest.raises(error, match=message):
        fit_density(flow(), rows, **QUICK)


REFUSED = [
    case({"data": with_row(float("nan"))}, "data has 1 row", id="refused-nan-row"),
    case({"data": data(), "valid_data": data(5, 3)}, "valid_data", id="refused-valid_data"),
    case({"data": data(), "batch_size": 0}, "batch_size", id="refused-batch_size"),
    case({"data": data(), "weight_decay": -1.0}, "weight_decay", id="refused-weight_decay"),
]


@pytest.mark.parametrize(("kwargs", "name"), REFUSED)
def test_a_refused_fit_moves_no_parameter(kwargs, name):
    fitted = flow()
    before = snapshot(fitted)
    with pytest.raises(ValueError, match=name):
        fit_density(fitted, **kwargs, **QUICK)
    assert unchanged(before, fitted)


@pytest.mark.parametrize("_", [case(None, id="one-row")])
def test_one_row_is_refused_or_warned_about(_):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises((ValueError, UserWarning), match="1 row|one row"):
            fit_density(flow(), data(1), **QUICK)


@pytest.mark.parametrize("_", [case(None, id="huge-scale")])
def test_data_far_from_unit_scale_are_warned_about(_):
    with pytest.warns(UserWarning, match="standardi"):
        fit_density(flow(), data() * 1e6, **QUICK)


# --- Data fit_density takes -----------------------------------------------------------------

GOOD_DATA = [
    case(data().double(), {}, id="float64"),
    case(data().half(), {}, id="float16"),
    case(data().numpy(), {}, id="numpy"),
    case(data().tolist(), {}, id="nested-list"),
    case(torch.randint(0, 9, (20, 2)), {"allow_integer_values": True}, id="integers-allowed"),
    case(data(), {"batch_size": 1000}, id="batch-larger-than-data"),
]


@pytest.mark.parametrize(("rows", "kwargs"), GOOD_DATA)
def test_data_of_another_kind_are_fitted_in_the_flows_dtype(rows, kwargs):
    fitted = flow()
    history = fit_density(fitted, rows, **kwargs, **QUICK)
    assert len(history) == 3
    assert all(np.isfinite(history))
    assert all(p.dtype == torch.float32 and bool(p.isfinite().all()) for p in fitted.parameters())


# --- Contexts -------------------------------------------------------------------------------

CONTEXTS = [
    case(conditional_flow, None, "needs context", id="context-missing"),
    case(flow, torch.randn(20, 3), "context was given but .* not conditional", id="ctx-extra"),
    case(conditional_flow, torch.randn(20, 2), r"context must have shape \(N, 3\)", id="ctx-w"),
    case(conditional_flow, torch.randn(19, 3), "one row per data row", id="context-rows"),
    case(conditional_flow, torch.randn(20), r"context must have shape \(N, 3\)", id="ctx-1-d"),
    case(
        conditional_flow,
        torch.randn(20, 3).index_fill_(0, torch.tensor([7]), float("nan")),
        r"context has 1 row.*\[7\]",
        id="context-nan-row",
    ),
]


@pytest.mark.parametrize(("make", "context", "message"), CONTEXTS)
def test_a_wrong_context_is_refused_by_name(make, context, message):
    with pytest.raises(ValueError, match=message):
        fit_density(make(), data(), context=context, **QUICK)


# --- What is passed as the flow -------------------------------------------------------------

NOT_FLOWS = [
    case(fit_density, nn.Linear(2, 2), id="fit_density-Linear"),
    case(fit_density, "realnvp", id="fit_density-string"),
    case(fit_density, dist.Normal(0.0, 1.0), id="fit_density-Normal"),
    case(fit_density, RealNVP, id="fit_density-the-class"),
    case(fit_density, None, id="fit_density-None"),
    case(anomaly_scores, nn.Linear(2, 2), id="anomaly_scores-Linear"),
]


@pytest.mark.parametrize(("function", "not_a_flow"), NOT_FLOWS)
def test_what_is_not_a_flow_is_refused_naming_the_argument(function, not_a_flow):
    kwargs = QUICK if function is fit_density else {}
    with pytest.raises(TypeError, match="flow_or_distribution must be"):
        function(not_a_flow, data(), **kwargs)


FLOW_DISTRIBUTIONS = [
    case((), {}, ValueError, "at least one transform", id="no-transforms"),
    case((nn.Linear(2, 2),), {}, TypeError, "Linear", id="Linear-module"),
    case((lambda y: y,), {}, TypeError, "function", id="function"),
    case((dist.transforms.ExpTransform(),), {}, ValueError, "input_dim is needed", id="no-dim"),
    case((flow(),), {"input_dim": 3}, ValueError, "input_dim", id="input_dim-mismatch"),
    case((flow(),), {"input_dim": 0}, ValueError, "input_dim", id="input_dim-zero"),
    case((flow(),), {"input_dim": 2.0}, TypeError, "input_dim", id="input_dim-float"),
]


@pytest.mark.parametrize(("transforms", "kwargs", "error", "message"), FLOW_DISTRIBUTIONS)
def test_flow_distribution_refuses_what_is_not_a_flow_when_built(
    transforms, kwargs, error, message
):
    with pytest.raises(error, match=message):
        flow_distribution(*transforms, **kwargs)


@pytest.mark.parametrize("_", [case(None, id="inverse-flow-with-input_dim")])
def test_a_flow_used_through_its_inverse_is_a_density_given_input_dim(_):
    density = flow_distribution(flow().inv, input_dim=2)
    assert bool(density.log_prob(data()).isfinite().all())


# --- Held-out data ----------------------------------------------------------------------

VALID = [
    case(flow, {"valid_data": data(5, 3)}, r"valid_data must have shape \(N, 2\)", id="v-w"),
    case(flow, {"valid_data": with_row(float("nan"))}, r"valid_data has 1 row", id="v-nan"),
    case(flow, {"valid_data": torch.ones(5, 2, dtype=int)}, "valid_data has integer", id="v-int"),
    case(flow, {"valid_data": data(0)}, "valid_data must have at least one row", id="v-empty"),
    case(conditional_flow, {"valid_data": data(5)}, "needs valid_context", id="v-ctx-missing"),
    case(
        flow,
        {"valid_data": data(5), "valid_context": torch.randn(5, 3)},
        "valid_context was given but the density is not conditional",
        id="valid_context-for-unconditional",
    ),
    case(
        conditional_flow,
        {"valid_data": data(5), "valid_context": torch.randn(4, 3)},
        "valid_context must have one row per valid_data row",
        id="valid_context-rows",
    ),
    case(
        conditional_flow,
        {"valid_context": torch.randn(5, 3)},
        "valid_context.*valid_data|valid_data.*valid_context",
        id="valid_context-without-valid_data",
    ),
    case(flow, {"valid_data": data(5), "valid_every": 0}, "valid_every must be", id="v-every-0"),
]


@pytest.mark.parametrize(("make", "kwargs", "message"), VALID)
def test_bad_held_out_data_are_refused_by_name(make, kwargs, message):
    context = torch.randn(20, 3) if make is conditional_flow else None
    with pytest.raises(ValueError, match=message):
        fit_density(make(), data(), context=context, **kwargs, **QUICK)


# --- Batch sizes and generators ---------------------------------------------------------

BATCH_SIZES = [
    case(fit_density, 0, ValueError, id="fit_density-batch-0"),
    case(fit_density, 2.5, TypeError, id="fit_density-batch-2.5"),
    case(fit_density, True, TypeError, id="fit_density-batch-True"),
    case(fit_density, None, TypeError, id="fit_density-batch-None"),
    case(anomaly_scores, 0, ValueError, id="anomaly_scores-batch-0"),
]


@pytest.mark.parametrize(("function", "batch_size", "error"), BATCH_SIZES)
def test_a_bad_batch_size_is_refused_by_name(function, batch_size, error):
    kwargs = QUICK if function is fit_density else {}
    with pytest.raises(error, match="batch_size must be an integer >= 1"):
        function(flow(), data(), batch_size=batch_size, **kwargs)


GENERATORS = [
    case(
        lambda g: fit_density(flow(), data(), generator=g, **QUICK),
        0,
        id="generator-fit_density-int",
    ),
    case(
        lambda g: fit_density(flow(), data(), generator=g, **QUICK),
        "7",
        id="generator-fit_density-str",
    ),
    case(
        lambda g: dequantize(torch.tensor([[0, 1]]), 4, generator=g),
        0,
        id="generator-dequantize-int",
    ),
]


@pytest.mark.parametrize(("call", "generator"), GENERATORS)
def test_a_generator_that_is_not_one_is_refused_by_name(call, generator):
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        call(generator)


@pytest.mark.parametrize("_", [case(None, id="same-generator-same-fit")])
def test_the_same_generator_seed_gives_the_same_fit(_):
    histories = []
    for _ in range(2):
        torch.manual_seed(0)
        generator = torch.Generator().manual_seed(1)
        histories.append(fit_density(flow(), data(), batch_size=5, generator=generator, **QUICK))
    assert histories[0] == histories[1]


# --- dequantize and bits_per_dim ------------------------------------------------------------

DEQUANTIZE = [
    case(
        torch.tensor([[0, 1]]),
        1,
        ValueError,
        "num_levels must be an integer >= 2",
        id="dequantize-K-1",
    ),
    case(
        torch.tensor([[0, 1]]),
        2.5,
        TypeError,
        "num_levels must be an integer",
        id="dequantize-K-2.5",
    ),
    case(
        torch.tensor([[0, 1]]),
        True,
        TypeError,
        "num_levels must be an integer",
        id="dequantize-K-True",
    ),
    case(
        torch.tensor([[-1, 1]]), 4, ValueError, r"integers in \[0, 3\]", id="dequantize-negative"
    ),
    case(torch.tensor([[4, 1]]), 4, ValueError, r"integers in \[0, 3\]", id="dequantize-level-K"),
    case(
        torch.tensor([[0.5, 1.0]]),
        4,
        ValueError,
        r"integers in \[0, 3\]",
        id="dequantize-fractional",
    ),
    case(
        torch.tensor([[float("nan"), 1.0]]),
        4,
        ValueError,
        r"integers in \[0, 3\]",
        id="dequantize-nan",
    ),
    case(None, 4, TypeError, "data must be a tensor", id="dequantize-data-None"),
]


@pytest.mark.parametrize(("values", "num_levels", "error", "message"), DEQUANTIZE)
def test_dequantize_refuses_what_is_not_levels_by_name(values, num_levels, error, message):
    with pytest.raises(error, match=message):
        dequantize(values, num_levels)


DEQUANTIZED = [
    case(torch.tensor([[255, 0]], dtype=torch.uint8), 256, torch.float32, id="uint8-256-levels"),
    case(torch.tensor([[3.0, 0.0]], dtype=torch.float64), 4, torch.float64, id="float64-levels"),
    case([[1, 2]], 3, torch.float32, id="nested-list-levels"),
]


@pytest.mark.parametrize(("values", "num_levels", "dtype"), DEQUANTIZED)
def test_dequantize_puts_each_level_in_its_own_cell_of_the_unit_cube(values, num_levels, dtype):
    levels = torch.as_tensor(values).to(dtype)
    y = dequantize(values, num_levels, generator=torch.Generator().manual_seed(0))
    assert y.dtype == dtype
    assert bool((y * num_levels).floor().eq(levels).all())


BITS = [
    case(
        torch.tensor(0.0), {"dim": 0, "num_levels": 256}, ValueError, "dim must be", id="bits-d-0"
    ),
    case(
        torch.tensor(0.0),
        {"dim": 4.0, "num_levels": 256},
        TypeError,
        "dim must be",
        id="bits-d-4.0",
    ),
    case(
        torch.tensor(0.0),
        {"dim": 4, "num_levels": 1},
        ValueError,
        "num_levels must",
        id="bits-K-1",
    ),
    case(
        [0.0, 1.0], {"dim": 4, "num_levels": 256}, TypeError, "log_prob", id="bits-log_prob-list"
    ),
]


@pytest.mark.parametrize(("log_prob", "kwargs", "error", "message"), BITS)
def test_bits_per_dim_refuses_bad_arguments_by_name(log_prob, kwargs, error, message):
    with pytest.raises(error, match=message):
        bits_per_dim(log_prob, **kwargs)


# --- Non-finite values ----------------------------------------------------------------------

NAN_PARAMETER = [
    case(lambda f: fit_density(f, data(), **QUICK), id="nan-parameter-fit_density"),
    case(lambda f: anomaly_scores(f, data()), id="nan-parameter-anomaly_scores"),
]


@pytest.mark.parametrize("use", NAN_PARAMETER)
def test_a_nan_flow_parameter_is_named(use):
    with pytest.raises((ValueError, RuntimeError), match=r"layers\.0\.net\.2\.bias"):
        use(nan_flow())


NON_FINITE = [
    case(nan_flow, data(), {}, (ValueError, RuntimeError), id="nan-parameter-moves-nothing"),
    case(
        flow,
        torch.full((8, 2), 1e30),
        {"allow_integer_values": True},
        NonFiniteLossError,
        id="overflowing-data-moves-nothing",
    ),
]


@pytest.mark.filterwarnings("ignore:data are far from unit scale")
@pytest.mark.parametrize(("make", "rows", "kwargs", "error"), NON_FINITE)
def test_a_non_finite_fit_moves_no_parameter(make, rows, kwargs, error):
    fitted = make()
    before = snapshot(fitted)
    with pytest.raises(error):
        fit_density(fitted, rows, **kwargs, **QUICK)
    assert all(
        torch.equal(a, b) or (a.isnan().all() and b.isnan().all())
        for a, b in zip(before, fitted.parameters(), strict=True)
    )


@pytest.mark.parametrize("_", [case(None, id="overflowing-data-says-standardize")])
def test_data_that_overflow_the_likelihood_are_named_with_the_fix(_):
    with (
        pytest.warns(UserWarning, match="far from unit scale.*standardize"),
        pytest.raises(NonFiniteLossError, match="no parameter was updated.*standardize"),
    ):
        fit_density(flow(), torch.full((8, 2), 1e30), allow_integer_values=True, **QUICK)


# --- Interrupts -----------------------------------------------------------------------------


def interrupted_fit(monkeypatch, k=3):
    """``fit_density`` interrupted in its step ``k``, after the backward pass and before the
    update: (flow, error, parameters as step ``k - 1`` left them)."""
    fitted, calls, armed, before = flow(), [], [], []
    real = loop._step_with_redraws

    def counting(step, policy):
        calls.append(None)
        if len(calls) == k:
            before.append(snapshot(fitted))
            armed.append(True)
        return real(step, policy)

    def hook(optimizer, args, kwargs):
        if armed:
            armed.clear()
            raise KeyboardInterrupt

    monkeypatch.setattr(loop, "_step_with_redraws", counting)
    handle = register_optimizer_step_pre_hook(hook)
    try:
        with pytest.raises(TrainingInterrupted) as error:
            fit_density(fitted, data(), num_steps=10, progress=False)
    finally:
        handle.remove()
    return fitted, error.value, before[0]


@pytest.mark.parametrize("_", [case(None, id="interrupted-history")])
def test_an_interrupted_fit_keeps_the_history_of_the_completed_steps(monkeypatch, _):
    _, error, _ = interrupted_fit(monkeypatch)
    assert len(error.history) == 2
    assert "after 2 of 10 steps" in str(error)


@pytest.mark.parametrize("_", [case(None, id="interrupted-parameters")])
def test_an_interrupted_fit_leaves_the_parameters_of_the_last_completed_step(monkeypatch, _):
    fitted, _, before = interrupted_fit(monkeypatch)
    assert unchanged(before, fitted)
    assert all(p.grad is None for p in fitted.parameters())


@pytest.mark.parametrize("_", [case(None, id="interrupted-eval-mode")])
def test_an_interrupted_fit_leaves_the_flow_in_evaluation_mode(monkeypatch, _):
    fitted, _, _ = interrupted_fit(monkeypatch)
    assert not fitted.training


case.check()

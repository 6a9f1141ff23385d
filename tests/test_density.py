import math
import re
import warnings

import numpy as np
import pyro.distributions as dist
import pytest
import torch
from helpers import autograd_log_det, randomize_
from pyro.distributions.transforms import BatchNorm

from pyro_realnvp import NonFiniteLossError, RealNVP
from pyro_realnvp.density import (
    anomaly_scores,
    bits_per_dim,
    dequantize,
    fit_density,
    flow_distribution,
)
from pyro_realnvp.flows.conditional import ConditionalRealNVP


def random_flow(dim, seed=0, dtype=torch.float32):
    return randomize_(RealNVP(dim, num_layers=4, hidden_dims=(16,), dtype=dtype), 0.3, seed)


def test_log_prob_is_base_log_prob_minus_log_det_by_hand():
    flow = random_flow(3, dtype=torch.float64)
    y = torch.randn(6, 3, dtype=torch.float64)
    z = flow.inv(y.clone())
    by_hand = dist.Normal(0.0, 1.0).log_prob(z).sum(-1) - autograd_log_det(flow, z)
    assert torch.allclose(flow_distribution(flow).log_prob(y), by_hand, atol=1e-8)


def quadrature(log_prob, dim, half_width=8.0, n=401):
    """Midpoint rule: ``(mass, mean)`` of ``exp(log_prob)`` on a box."""
    step = 2 * half_width / n
    axis = torch.linspace(-half_width + step / 2, half_width - step / 2, n, dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(*[axis] * dim, indexing="ij"), -1).reshape(-1, dim)
    with torch.no_grad():
        density = torch.cat([log_prob(chunk).exp() for chunk in grid.split(65536)])
    mass = density.sum() * step**dim
    return mass, (density[:, None] * grid).sum(0) * step**dim / mass


def batch_normed(dim):
    norm = BatchNorm(dim).double()
    with torch.no_grad():
        norm.gamma.fill_(1.5)
        norm.moving_mean.fill_(0.3)
        norm.moving_variance.fill_(0.5)
    return flow_distribution(random_flow(dim, 1, torch.float64), norm.eval(), input_dim=dim)


DENSITIES = {
    "1d-realnvp": lambda: flow_distribution(random_flow(1, dtype=torch.float64)),
    "2d-realnvp": lambda: flow_distribution(random_flow(2, dtype=torch.float64)),
    "2d-realnvp-batchnorm": lambda: batch_normed(2),
}


@pytest.mark.parametrize("make", DENSITIES.values(), ids=DENSITIES)
def test_density_integrates_to_one(make):
    density = make()
    mass, _ = quadrature(density.log_prob, density.event_shape[0])
    assert abs(mass.item() - 1) < 0.01


@pytest.mark.parametrize("make", DENSITIES.values(), ids=DENSITIES)
def test_sample_mean_matches_the_density_mean(make):
    density = make()
    _, mean = quadrature(density.log_prob, density.event_shape[0])
    draws = density.sample((20000,))
    stderr = draws.std(0) / math.sqrt(draws.shape[0])
    assert ((draws.mean(0) - mean).abs() < 4 * stderr).all()


def test_fit_recovers_a_correlated_gaussian():
    cov = torch.tensor([[1.0, 0.8], [0.8, 1.0]])
    truth = dist.MultivariateNormal(torch.tensor([2.0, -1.0]), cov)
    flow = RealNVP(2, num_layers=4, hidden_dims=(16,))
    losses = fit_density(flow, truth.sample((2000,)), num_steps=150, lr=3e-2, progress=False)
    held_out = truth.sample((2000,))
    with torch.no_grad():
        gap = truth.log_prob(held_out).mean() - flow_distribution(flow).log_prob(held_out).mean()
    assert len(losses) == 150
    assert 0 <= gap.item() + 0.02 < 0.07


def test_fit_trains_batchnorm_and_leaves_it_in_eval_mode():
    norm = BatchNorm(2)
    density = flow_distribution(RealNVP(2, num_layers=2, hidden_dims=(8,)), norm, input_dim=2)
    fit_density(density, 5 + 3 * torch.randn(500, 2), num_steps=20, lr=1e-2, progress=False)
    assert not norm.training
    assert (norm.moving_mean > 0.5).all()


def test_fit_conditional_density_learns_the_context():
    context = torch.randn(2000, 1)
    data = 3 * context + 0.1 * torch.randn(2000, 1)
    flow = ConditionalRealNVP(1, 1, num_layers=2, hidden_dims=(16,))
    fit_density(flow, data, context=context, num_steps=150, lr=5e-2, progress=False)
    draws = flow_distribution(flow).condition(torch.tensor([1.0])).sample((2000,))
    assert abs(draws.mean().item() - 3) < 0.3


def test_early_stopping_keeps_the_best_held_out_parameters():
    data, held_out = torch.randn(30, 2), torch.randn(500, 2)
    options = {"num_steps": 300, "lr": 3e-2, "batch_size": 30, "progress": False}
    held_out_nll = []
    for valid in (None, held_out):
        torch.manual_seed(0)
        flow = RealNVP(2, num_layers=4, hidden_dims=(32,), output_gain=1.0)
        fit_density(flow, data, valid_data=valid, valid_every=20, **options)
        held_out_nll.append(anomaly_scores(flow, held_out).mean().item())
    # 30 points and 300 full-batch steps overfit (held-out NLL 30 to 2e7 over seeds, 3.0
    # at the best checkpoint): early stopping must restore the better parameters.
    assert held_out_nll[1] < held_out_nll[0] - 1.0


def test_anomaly_scores_are_negative_log_density_in_chunks():
    flow = random_flow(2)
    data = torch.randn(10, 2)
    expected = -flow_distribution(flow).log_prob(data)
    assert torch.allclose(anomaly_scores(flow, data, batch_size=3), expected)


def test_non_finite_loss_raises_and_updates_nothing():
    flow = random_flow(2)
    before = [p.clone() for p in flow.parameters()]
    with (
        pytest.warns(UserWarning, match="far from unit scale"),
        pytest.raises(NonFiniteLossError, match="no parameter was updated") as error,
    ):
        fit_density(
            flow, torch.full((8, 2), 1e30), num_steps=3, allow_integer_values=True, progress=False
        )
    assert all(torch.equal(a, b) for a, b in zip(before, flow.parameters(), strict=True))
    # The likely cause, data far from a fresh flow's unit scale, is named.
    assert "The data reach |x| = 1e+30: standardize them first" in str(error.value)


def cauchy(rows):
    return dist.Cauchy(0.0, 1.0).sample((rows, 2))


ORDINARY_SCALES = {
    "standard-normal": lambda: torch.randn(500, 2),
    "scale-100": lambda: 100 * torch.randn(500, 2),
    "offset-1000-scale-100": lambda: 1000 + 100 * torch.randn(500, 2),
    # Heavy tails reach far beyond 1e4, but typical values are near 1: no warning.
    "cauchy": lambda: cauchy(5000),
}


@pytest.mark.parametrize("make", ORDINARY_SCALES.values(), ids=ORDINARY_SCALES)
def test_data_of_ordinary_scale_fit_without_a_scale_warning(make):
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fit_density(RealNVP(2, num_layers=2), make(), num_steps=2, progress=False)


FAR_SCALES = {
    "scale-1e6": (lambda: 1e6 * torch.randn(500, 2), r"\|x\| = [4-9]\.\d+e\+05"),
    "offset-1e5": (lambda: 1e5 + torch.randn(500, 2), r"\|x\| = 1e\+05"),
    "one-column-scale-1e5": (
        lambda: torch.randn(500, 2) * torch.tensor([1.0, 1e5]),
        r"\|x\| = [4-9]\.\d+e\+04",
    ),
}


@pytest.mark.parametrize(("make", "size"), FAR_SCALES.values(), ids=FAR_SCALES)
def test_data_far_from_unit_scale_are_warned_about_and_still_fitted(make, size):
    torch.manual_seed(0)
    with pytest.warns(UserWarning, match=f"data are far from unit scale.*{size}.*standardize"):
        history = fit_density(RealNVP(2, num_layers=2), make(), num_steps=2, progress=False)
    assert len(history) == 2


@pytest.mark.parametrize("function", [fit_density, anomaly_scores], ids=lambda f: f.__name__)
def test_a_non_finite_buffer_of_one_of_several_transforms_is_named(function):
    norm = BatchNorm(2)
    norm.moving_variance[1] = float("inf")
    density = flow_distribution(RealNVP(2, num_layers=2), norm, input_dim=2)
    before = [t.clone() for t in (*density.transforms[0].parameters(), *norm.parameters())]
    with pytest.raises(ValueError, match=r"the flow's BatchNorm\[1\]\.moving_variance hold"):
        function(density, torch.randn(8, 2))
    after = (*density.transforms[0].parameters(), *norm.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))


BAD_DATA = {
    "nan-row": (torch.tensor([[0.5, 0.1], [float("nan"), 0.2]]), "data has 1 row.*NaN"),
    "inf-row": (torch.tensor([[0.5, float("inf")]]), "data has 1 row.*infinite"),
    "integer-dtype": (torch.randint(0, 16, (4, 2)), "integer dtype.*dequantize"),
    "whole-number-floats": (torch.randint(0, 16, (4, 2)).float(), "whole numbers.*dequantize"),
    # Beyond 2**23 every float32 is whole: continuous data that large need standardizing.
    "whole-floats-at-1e30": (
        # Seeded: the message names the largest value's exponent, e+30 here (2.2e30).
        torch.randn(4, 2, generator=torch.Generator().manual_seed(0)) * 1e30,
        "whole numbers because its values reach .*e"
        r"\+30, where every torch.float32 is a whole number: standardize",
    ),
    "wrong-width": (torch.randn(4, 3), r"data must have shape \(N, 2\)"),
    "one-dimensional": (torch.randn(4), r"data must have shape \(N, 2\)"),
    "no-rows": (torch.zeros(0, 2), r"data must have at least one row, got shape \(0, 2\)"),
}


@pytest.mark.parametrize(("data", "message"), BAD_DATA.values(), ids=BAD_DATA)
def test_bad_data_is_rejected(data, message):
    with pytest.raises(ValueError, match=message):
        fit_density(RealNVP(2, num_layers=2), data, num_steps=1, progress=False)


# Scoring accepts whole numbers (the dequantisation guard is for fitting).
BAD_SCORED = {k: v for k, v in BAD_DATA.items() if "integer" not in k and "whole" not in k}


@pytest.mark.parametrize(("data", "message"), BAD_SCORED.values(), ids=BAD_SCORED)
def test_bad_data_is_rejected_by_anomaly_scores(data, message):
    with pytest.raises(ValueError, match=message):
        anomaly_scores(RealNVP(2, num_layers=2), data)


def test_bad_held_out_data_is_rejected_before_any_step():
    flow = RealNVP(2, num_layers=2)
    before = [p.clone() for p in flow.parameters()]
    with pytest.raises(ValueError, match="valid_data must have at least one row"):
        fit_density(flow, torch.randn(4, 2), valid_data=torch.zeros(0, 2), progress=False)
    assert all(torch.equal(a, b) for a, b in zip(before, flow.parameters(), strict=True))


BAD_CONTEXT = {
    "missing": (None, "needs context"),
    "wrong-rows": (torch.randn(3, 1), "one row per data row"),
    "wrong-width": (torch.randn(4, 2), r"context must have shape \(N, 1\), got \(4, 2\)"),
    "one-dimensional": (torch.randn(4), r"context must have shape \(N, 1\), got \(4,\)"),
    "nan": (torch.tensor([[0.0], [float("nan")], [0.0], [0.0]]), "context has 1 row"),
}


@pytest.mark.parametrize(("context", "message"), BAD_CONTEXT.values(), ids=BAD_CONTEXT)
def test_bad_context_is_rejected(context, message):
    flow = ConditionalRealNVP(2, 1, num_layers=2)
    with pytest.raises(ValueError, match=message):
        fit_density(flow, torch.randn(4, 2), context=context, num_steps=1, progress=False)


@pytest.mark.parametrize(("context", "message"), BAD_CONTEXT.values(), ids=BAD_CONTEXT)
def test_bad_context_is_rejected_by_anomaly_scores(context, message):
    flow = ConditionalRealNVP(2, 1, num_layers=2)
    with pytest.raises(ValueError, match=message):
        anomaly_scores(flow, torch.randn(4, 2), context=context)


def test_anomaly_scores_of_a_conditional_density_are_per_row_in_chunks():
    flow = randomize_(ConditionalRealNVP(2, 1, num_layers=2, hidden_dims=(8,)), std=0.3)
    data, context = torch.randn(5, 2), torch.randn(5, 1)
    expected = -flow_distribution(flow).condition(context).log_prob(data)
    assert torch.allclose(anomaly_scores(flow, data, context=context, batch_size=2), expected)


@pytest.mark.parametrize("function", [fit_density, anomaly_scores], ids=lambda f: f.__name__)
def test_context_for_an_unconditional_density_is_rejected(function):
    with pytest.raises(ValueError, match="context was given but the density is not conditional"):
        function(RealNVP(2), torch.randn(4, 2), context=torch.randn(4, 1))


def test_dequantize_refuses_values_out_of_range():
    with pytest.raises(ValueError, match="num_levels"):
        dequantize(torch.tensor([[0, 16]]), num_levels=16)


def test_bits_per_dim_of_the_uniform_density_is_log2_levels():
    log_prob = torch.zeros(3)  # uniform on the unit cube
    assert torch.allclose(
        bits_per_dim(log_prob, dim=64, num_levels=17), torch.tensor(math.log2(17))
    )


def test_fit_trains_a_flow_used_through_its_inverse():
    flow = RealNVP(2, num_layers=2)
    before = [p.clone() for p in flow.parameters()]
    density = flow_distribution(flow.inv, input_dim=2)
    fit_density(density, torch.randn(16, 2) + 3.0, num_steps=3, progress=False)
    assert not all(torch.equal(a, b) for a, b in zip(before, flow.parameters(), strict=True))


def unchanged(flow, before):
    return all(torch.equal(a, b) for a, b in zip(before, flow.parameters(), strict=True))


BAD_FIT_ARGS = {
    "valid_every-0": (
        {"valid_every": 0},
        ValueError,
        "valid_every must be an integer >= 1, got 0",
    ),
    "valid_every-negative": ({"valid_every": -1}, ValueError, "valid_every must be an integer"),
    "valid_every-float": ({"valid_every": 2.5}, TypeError, "valid_every must be an integer >= 1"),
    "batch_size-float": ({"batch_size": 2.5}, TypeError, "batch_size must be an integer >= 1"),
    "batch_size-0": ({"batch_size": 0}, ValueError, "batch_size must be an integer >= 1, got 0"),
    "batch_size-none": ({"batch_size": None}, TypeError, "batch_size must be an integer >= 1"),
}


@pytest.mark.parametrize(("kwargs", "error", "message"), BAD_FIT_ARGS.values(), ids=BAD_FIT_ARGS)
def test_bad_fit_arguments_are_refused_before_any_step(kwargs, error, message):
    flow = RealNVP(2, num_layers=2)
    before = [p.clone() for p in flow.parameters()]
    data, valid = torch.randn(8, 2), torch.randn(4, 2)
    with pytest.raises(error, match=message):
        fit_density(flow, data, valid_data=valid, num_steps=3, progress=False, **kwargs)
    assert unchanged(flow, before)


def test_numpy_integer_batch_size_and_valid_every_are_accepted():
    flow, data = RealNVP(2, num_layers=2), torch.randn(8, 2)
    options = {"batch_size": np.int64(4), "valid_every": np.int64(1), "progress": False}
    assert len(fit_density(flow, data, valid_data=data, num_steps=2, **options)) == 2


NOT_DATA = {
    "none": (None, "data must be a tensor, a numpy array or a nested list of numbers, got None"),
    "str": ("abc", "data must be a tensor, a numpy array or a nested list of numbers, got str"),
    "strings": ([["a", "b"]], "data must be a tensor.*converting it failed"),
    "ragged": ([[0.5, 0.1], [0.2]], "data must be a tensor.*converting it failed"),
}


@pytest.mark.parametrize("function", [fit_density, anomaly_scores], ids=lambda f: f.__name__)
@pytest.mark.parametrize(("data", "message"), NOT_DATA.values(), ids=NOT_DATA)
def test_data_that_is_not_numbers_is_a_type_error_naming_data(function, data, message):
    with pytest.raises(TypeError, match=message):
        function(RealNVP(2, num_layers=2), data)


@pytest.mark.parametrize(
    "data", [np.array([[0.5, 0.1], [0.3, -0.2]]), [[0.5, 0.1], [0.3, -0.2]]], ids=["numpy", "list"]
)
def test_numpy_arrays_and_nested_lists_are_data(data):
    scores = anomaly_scores(RealNVP(2, num_layers=2), data)
    assert scores.shape == (2,)


def test_a_context_that_is_not_numbers_is_named():
    flow = ConditionalRealNVP(2, 1, num_layers=2)
    with pytest.raises(TypeError, match="context must be a tensor"):
        anomaly_scores(flow, torch.randn(3, 2), context="abc")


@pytest.mark.parametrize(
    ("batch_size", "error"), [(2.5, TypeError), (None, TypeError), (0, ValueError)]
)
def test_anomaly_scores_names_a_bad_batch_size(batch_size, error):
    with pytest.raises(error, match="batch_size must be an integer >= 1"):
        anomaly_scores(RealNVP(2, num_layers=2), torch.randn(3, 2), batch_size=batch_size)


def test_a_density_with_only_frozen_parameters_is_refused_before_any_step():
    flow = RealNVP(2, num_layers=2).requires_grad_(False)
    expected = re.escape(
        "the density has no trainable parameters (every parameter has requires_grad=False)"
    )
    with pytest.raises(ValueError, match=expected):
        fit_density(flow, torch.randn(8, 2), num_steps=2, progress=False)


def test_frozen_layers_stay_put_while_the_others_train():
    flow = RealNVP(2, num_layers=2)
    flow.layers[0].requires_grad_(False)
    frozen = [p.clone() for p in flow.layers[0].parameters()]
    fit_density(flow, torch.randn(16, 2) + 3.0, num_steps=3, progress=False)
    assert unchanged(flow.layers[0], frozen)


BAD_LEVELS = {
    "zero": (0, ValueError, "num_levels must be an integer >= 2, got 0"),
    "one": (1, ValueError, "num_levels must be an integer >= 2, got 1"),
    "float": (2.5, TypeError, "num_levels must be an integer >= 2, got 2.5"),
}


@pytest.mark.parametrize(("num_levels", "error", "message"), BAD_LEVELS.values(), ids=BAD_LEVELS)
def test_dequantize_names_a_bad_num_levels(num_levels, error, message):
    with pytest.raises(error, match=f"^{re.escape(message)}$"):
        dequantize(torch.zeros(2, 2, dtype=torch.long), num_levels=num_levels)


BAD_BITS = {
    "dim-0": ({"dim": 0}, ValueError, "dim must be an integer >= 1, got 0"),
    "dim-float": ({"dim": 2.5}, TypeError, "dim must be an integer >= 1, got 2.5"),
    "levels-1": ({"num_levels": 1}, ValueError, "num_levels must be an integer >= 2, got 1"),
    "levels-float": ({"num_levels": 2.5}, TypeError, "num_levels must be an integer >= 2"),
}


@pytest.mark.parametrize(("kwargs", "error", "message"), BAD_BITS.values(), ids=BAD_BITS)
def test_bits_per_dim_names_a_bad_dim_or_num_levels(kwargs, error, message):
    kwargs = {"dim": 4, "num_levels": 256, **kwargs}
    with pytest.raises(error, match=f"^{re.escape(message)}"):
        bits_per_dim(torch.tensor(0.0), **kwargs)


def test_a_generator_that_is_not_one_is_refused_by_name():
    with pytest.raises(TypeError, match="^generator must be a torch.Generator"):
        fit_density(RealNVP(2, num_layers=2), torch.randn(20, 2), num_steps=2, generator=0)

"""Bijection properties shared by every transform the package exports."""

import pytest
import torch
from helpers import autograd_log_det, randomize_, saturate_

from pyro_realnvp import MaskedAffineCoupling, RealNVP, half_mask, masked_affine_coupling

CASES = {
    "coupling-alternating": lambda: masked_affine_coupling(5, (16,), dtype=torch.float64),
    "coupling-half": lambda: MaskedAffineCoupling(half_mask(4), (8, 8), dtype=torch.float64),
    "realnvp-d1": lambda: RealNVP(1, num_layers=4, hidden_dims=(8,), dtype=torch.float64),
    "realnvp-d2": lambda: RealNVP(2, num_layers=4, dtype=torch.float64),
    "realnvp-d7": lambda: RealNVP(7, dtype=torch.float64),
}
transforms = pytest.mark.parametrize("make", CASES.values(), ids=CASES.keys())


def draw(transform, *batch):
    return torch.randn(*batch, transform_dim(transform), dtype=torch.float64)


@transforms
def test_identity_at_init(make):
    transform = make()
    x = draw(transform, 6)
    assert torch.equal(transform(x), x)
    assert torch.equal(transform.log_abs_det_jacobian(x, transform(x)), torch.zeros(6).double())


@transforms
def test_inverse_of_forward_on_a_fresh_tensor(make):
    transform = randomize_(make())
    x = draw(transform, 10)
    y = transform(x)
    assert not torch.allclose(y, x)
    # A clone defeats the one-slot cache, so the inverse is really computed.
    assert torch.allclose(transform.inv(y.clone()), x, atol=1e-10)


@transforms
def test_forward_of_inverse_on_a_fresh_tensor(make):
    transform = randomize_(make(), seed=1)
    y = draw(transform, 10)
    x = transform.inv(y)
    assert torch.allclose(transform(x.clone()), y, atol=1e-10)


@transforms
@pytest.mark.parametrize("saturated", [False, True], ids=["random", "saturated"])
def test_log_det_matches_autograd_jacobian(make, saturated):
    transform = randomize_(make(), seed=2)
    if saturated:
        saturate_(transform)
    x = draw(transform, 4)
    expected = autograd_log_det(transform, x)
    if saturated:
        # The stacked Jacobian's LU loses digits there; the chain rule per layer does not.
        expected = layerwise_autograd_log_det(transform, x)
    fresh = transform.log_abs_det_jacobian(x.clone(), transform(x).clone())
    cached_y = transform(x)
    cached = transform.log_abs_det_jacobian(x, cached_y)
    assert torch.allclose(fresh, expected, atol=1e-8)
    assert torch.allclose(cached, expected, atol=1e-8)


def layerwise_autograd_log_det(transform, x):
    total = torch.zeros(x.shape[:-1], dtype=x.dtype)
    for layer in getattr(transform, "layers", [transform]):
        scale = layer._scale_shift(layer._split(x)[0])[0]
        assert scale.abs().max() > 0.99 * layer.scale_bound  # really in the saturated region
        total = total + autograd_log_det(layer, x)
        x = layer._forward(x)[0].detach()
    return total


@transforms
def test_inverse_log_det_is_negated(make):
    transform = randomize_(make(), seed=3)
    x = draw(transform, 3)
    y = transform(x).clone()
    x_back = transform.inv(y)
    inverse_log_det = transform.inv.log_abs_det_jacobian(y, x_back)
    assert torch.allclose(inverse_log_det, -autograd_log_det(transform, x), atol=1e-8)


@transforms
def test_batch_shapes(make):
    transform = randomize_(make())
    x = draw(transform, 2, 3)
    y = transform(x)
    assert y.shape == x.shape
    assert transform.log_abs_det_jacobian(x, y).shape == (2, 3)
    assert torch.allclose(transform(x[1, 2]), y[1, 2])


@transforms
def test_gradients_reach_every_parameter(make):
    transform = randomize_(make(), seed=4)
    x = draw(transform, 16)
    y = transform(x)
    (y.pow(2).sum() + transform.log_abs_det_jacobian(x, y).sum()).backward()
    for name, param in transform.named_parameters():
        if name.endswith("net.0.weight") and transform_dim(transform) == 1:
            continue  # with one coordinate the conditioner's input is always zero
        assert param.grad is not None, name
        assert param.grad.abs().sum() > 0, name


def transform_dim(transform):
    return (
        transform.layers[0].mask.numel() if hasattr(transform, "layers") else len(transform.mask)
    )


@transforms
def test_scale_bound_keeps_outputs_finite(make):
    transform = saturate_(randomize_(make(), std=3.0, seed=5), level=1e6)
    x = draw(transform, 8) * 10
    y = transform(x)
    assert torch.isfinite(y).all()
    assert torch.isfinite(transform.log_abs_det_jacobian(x, y)).all()

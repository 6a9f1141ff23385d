import pytest
import torch

from conftest import randomize_
from pyro_realnvp import MaskedAffineCoupling, alternating_mask, masked_affine_coupling
from pyro_realnvp.nn import soft_clamp


def test_masked_coordinates_are_untouched():
    mask = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.0])
    layer = randomize_(MaskedAffineCoupling(mask, (16,)))
    x = torch.randn(20, 5)
    y = layer(x)
    kept = mask.bool()
    assert torch.equal(y[:, kept], x[:, kept])
    assert (y[:, ~kept] != x[:, ~kept]).all()


def test_forward_matches_paper_formula():
    mask = alternating_mask(4)
    layer = randomize_(MaskedAffineCoupling(mask, (8,), scale_bound=3.0))
    x = torch.randn(7, 4)
    s, t = (layer.net(mask * x) * layer.output_gain).chunk(2, dim=-1)
    s = soft_clamp(s, 3.0)
    expected = mask * x + (1 - mask) * (x * torch.exp(s) + t)
    assert torch.allclose(layer(x), expected, atol=1e-6)
    y = expected.clone()
    s_y, t_y = (layer.net(mask * y) * layer.output_gain).chunk(2, dim=-1)
    inverse = mask * y + (1 - mask) * (y - t_y) * torch.exp(-soft_clamp(s_y, 3.0))
    assert torch.allclose(layer.inv(y), inverse, atol=1e-6)
    assert torch.allclose(inverse, x, atol=1e-5)


def test_log_scale_saturates_at_the_bound():
    layer = MaskedAffineCoupling(alternating_mask(4), (8,), scale_bound=2.0)
    with torch.no_grad():
        layer.net[-1].bias.fill_(1e4)
    x = torch.randn(3, 4)
    log_det = layer.log_abs_det_jacobian(x, layer(x))
    assert torch.allclose(log_det, torch.full((3,), 2.0 * 2))


def test_factory_uses_alternating_mask():
    assert masked_affine_coupling(3, parity=0).mask.tolist() == [1.0, 0.0, 1.0]


@pytest.mark.parametrize("bound", [0.0, -1.0])
def test_non_positive_scale_bound_is_rejected(bound):
    with pytest.raises(ValueError, match="scale_bound"):
        MaskedAffineCoupling(alternating_mask(3), scale_bound=bound)


def test_bad_mask_is_rejected_by_the_layer():
    with pytest.raises(ValueError, match="binary"):
        MaskedAffineCoupling(torch.tensor([2.0, 0.0]))

import pytest
import torch
import torch.nn.functional as F

from pyro_realnvp import MaskedAffineCoupling, RealNVP
from pyro_realnvp.flows.image import (
    ConvConditioner,
    channel_mask,
    checkerboard_mask,
    multiscale_realnvp,
    squeeze,
)
from pyro_realnvp.flows.masks import alternating_mask


def randomize(flow, sd=0.05, seed=0):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in flow.parameters():
            p.copy_(sd * torch.randn(p.shape, generator=generator, dtype=p.dtype))
    return flow


def small_flow(shape=(1, 8, 8), **kwargs):
    return multiscale_realnvp(shape, hidden_channels=4, num_blocks=1, **kwargs)


def test_squeeze_matches_pixel_unshuffle_on_values_and_on_integer_layouts():
    x = torch.randn(2, 3, 4, 6)
    assert torch.equal(squeeze(x), F.pixel_unshuffle(x, 2))
    layout = torch.arange(3 * 4 * 6).reshape(3, 4, 6)
    assert torch.equal(squeeze(layout), F.pixel_unshuffle(layout[None].float(), 2)[0].long())


def test_squeeze_refuses_odd_sizes():
    with pytest.raises(ValueError, match="even height and width"):
        squeeze(torch.zeros(1, 3, 4))


def test_masks_with_opposite_parity_are_complements():
    for make in (checkerboard_mask, channel_mask):
        a, b = make(4, 3, 5, 0), make(4, 3, 5, 1)
        assert torch.equal(a + b, torch.ones(4, 3, 5))
    board = checkerboard_mask(1, 4, 4)[0]
    assert torch.equal(board[:, :-1] + board[:, 1:], torch.ones(4, 3))  # neighbours differ
    with pytest.raises(ValueError, match="at least 2 channels"):
        channel_mask(1, 2, 2)


def test_a_new_multiscale_flow_is_the_identity():
    flow = small_flow()
    x = torch.randn(5, 64)
    y = flow(x)
    assert torch.equal(y, x)
    assert torch.equal(flow.log_abs_det_jacobian(x, y), torch.zeros(5))


def test_inverse_of_forward_on_a_fresh_tensor_and_batch_shapes():
    flow = randomize(small_flow())
    x = torch.randn(2, 3, 64)
    y = flow(x)
    assert y.shape == (2, 3, 64)
    assert flow.log_abs_det_jacobian(x, y).shape == (2, 3)
    assert not torch.allclose(y, x)
    assert torch.allclose(flow.inv(y.clone()), x, atol=1e-5)


def test_log_det_equals_autograd_jacobian_in_float64():
    flow = randomize(small_flow(shape=(2, 4, 4), dtype=torch.float64))
    x = torch.randn(32, dtype=torch.float64)
    jacobian = torch.autograd.functional.jacobian(flow, x)
    expected = torch.linalg.slogdet(jacobian).logabsdet
    assert torch.allclose(flow.log_abs_det_jacobian(x, flow(x)), expected, atol=1e-9)


def test_factored_out_pixels_are_neither_moved_nor_read_by_coarser_layers():
    flow = randomize(small_flow())
    # Data-to-base order is reversed; the first 6 layers (3 checkerboard, 3 channel)
    # work at full resolution, then half the 64 coordinates are factored out.
    coarse = list(flow.layers)[::-1][6:]
    x = torch.randn(64, dtype=torch.float32)
    moved = set()
    for layer in coarse:
        jacobian = torch.autograd.functional.jacobian(lambda v, layer=layer: layer(v), x)
        moved |= set((jacobian - torch.eye(64)).abs().sum(0).nonzero().flatten().tolist())
        moved |= set((jacobian - torch.eye(64)).abs().sum(1).nonzero().flatten().tolist())
    assert len(moved) == 32  # only the coordinates still in play are read or moved


def test_every_pixel_moves_and_gradients_reach_every_parameter():
    flow = randomize(small_flow())
    x = torch.randn(4, 64)
    y = flow(x)
    assert bool(((y - x).abs() > 1e-6).all(0).all())
    (y.square().sum() + flow.log_abs_det_jacobian(x, y).sum()).backward()
    for name, p in flow.named_parameters():
        assert p.grad is not None, name
        assert p.grad.abs().sum() > 0, name


def test_parameters_follow_the_requested_dtype():
    flow = small_flow(dtype=torch.float64)
    assert {p.dtype for p in flow.parameters()} == {torch.float64}


def test_architecture_errors_name_the_problem():
    with pytest.raises(ValueError, match="divisible by 4"):
        multiscale_realnvp((1, 6, 6), num_scales=3)
    with pytest.raises(ValueError, match="num_scales"):
        multiscale_realnvp((1, 8, 8), num_scales=0)
    layout = torch.arange(4).reshape(1, 2, 2)
    with pytest.raises(ValueError, match="free coordinate must lie in the layout"):
        ConvConditioner(layout, torch.tensor([0, 1]), torch.tensor([2, 5]), 6)


def test_from_couplings_checks_the_couplings_agree():
    layers = [MaskedAffineCoupling(alternating_mask(3, p), (4,)) for p in (0, 1)]
    assert len(RealNVP.from_couplings(layers).layers) == 2
    with pytest.raises(ValueError, match="disagree"):
        RealNVP.from_couplings([layers[0], MaskedAffineCoupling(alternating_mask(4), (4,))])
    with pytest.raises(ValueError, match="at least one"):
        RealNVP.from_couplings([])


BAD_IMAGE_ARGS = {
    "board-channels-negative": (
        lambda: checkerboard_mask(-1, 2, 2), ValueError, "channels must be an integer >= 1"
    ),
    "board-height-float": (
        lambda: checkerboard_mask(1, 2.0, 2), TypeError, "height must be an integer >= 1"
    ),
    "board-parity-2": (lambda: checkerboard_mask(1, 2, 2, 2), ValueError, "parity must be 0 or 1"),
    "channel-channels-float": (
        lambda: channel_mask(2.0, 2, 2), TypeError, "channels must be an integer >= 2"
    ),
    "channel-width-0": (lambda: channel_mask(2, 2, 0), ValueError, "width must be an integer"),
    "squeeze-2d": (lambda: squeeze(torch.zeros(4, 4)), ValueError, r"\(\.\.\., C, H, W\)"),
    "squeeze-list": (lambda: squeeze([[1.0]]), TypeError, "squeeze needs a torch.Tensor"),
    "shape-2d": (lambda: small_flow((8, 8)), ValueError, r"shape must be \(C, H, W\)"),
    "shape-zero": (lambda: small_flow((0, 8, 8)), ValueError, r"shape must be \(C, H, W\)"),
    "shape-float": (lambda: small_flow((1, 8.0, 8)), TypeError, r"shape must be \(C, H, W\)"),
    "shape-int": (lambda: small_flow(8), TypeError, r"shape must be \(C, H, W\)"),
    "num_scales-str": (
        lambda: small_flow(num_scales="2"), TypeError, "num_scales must be an integer"
    ),
    "hidden_channels-0": (
        lambda: multiscale_realnvp((1, 4, 4), hidden_channels=0), ValueError, "hidden_channels"
    ),
    "num_blocks-negative": (
        lambda: multiscale_realnvp((1, 4, 4), num_blocks=-1), ValueError, "num_blocks"
    ),
    "activation-str": (
        lambda: small_flow(activation="elu"), TypeError, "activation must be a torch.nn.Module"
    ),
}  # fmt: skip


@pytest.mark.parametrize(("call", "error", "message"), BAD_IMAGE_ARGS.values(), ids=BAD_IMAGE_ARGS)
def test_image_helpers_name_a_bad_argument(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_a_list_shape_is_accepted():
    assert small_flow([1, 4, 4], num_scales=1).input_dim == 16

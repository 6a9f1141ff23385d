"""Bad-input battery: bad or unusual arguments passed to the public API.

Each table drives one test function; each row (one test id) is one case. A case asserts
the ideal answer: an error of the right type whose message names the argument (and the
accepted range where there is one), a warning, or a correct result. Where the package's
answer is not yet that, the row stays, marked ``xfail(strict=True)`` with ``"BAD: ..."``
or ``"WEAK: ..."`` saying what it does now.
"""

import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Trace_ELBO
from pyro.infer.autoguide import AutoNormal, init_to_value
from torch import nn

from battery.cases import Cases
from pyro_realnvp import (
    AutoRealNVP,
    ConditionalRealNVP,
    FastPathError,
    MaskedAffineCoupling,
    RealNVP,
    alternating_mask,
    bit_mask,
    channel_mask,
    checkerboard_mask,
    coupling_masks,
    fit,
    fit_distributed,
    fit_fast,
    half_mask,
    masked_affine_coupling,
    multiscale_realnvp,
    psis_khat,
    realnvp,
    separating_codes,
    squeeze,
    to_inference_data,
)

TINY = {"num_layers": 2, "hidden_dims": (8,)}


def model():
    pyro.sample("x", dist.Normal(0.0, 1.0))


def tiny_guide(**options):
    return AutoRealNVP(model, **{**TINY, **options})


#: Every case whose answer is not yet the ideal, by id: what the package does now. Each is
#: marked ``xfail(strict=True)`` by :func:`case`, so a fix shows up as an XPASS.
GAPS: dict[str, str] = {}
case = Cases(GAPS)


@pytest.fixture(autouse=True)
def _fresh_store():
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    yield
    pyro.clear_param_store()


# --- AutoRealNVP's options -------------------------------------------------------------

GUIDE_REFUSED = [
    case({"num_layers": 1}, ValueError, r"num_layers.*>= 2", id="num_layers-1"),
    case({"num_layers": 0}, ValueError, r"num_layers.*>= 2", id="num_layers-0"),
    case({"num_layers": -4}, ValueError, r"num_layers.*>= 2", id="num_layers-negative"),
    case({"num_layers": True}, TypeError, r"num_layers.*integer", id="num_layers-bool"),
    case({"num_layers": "4"}, TypeError, r"num_layers.*integer", id="num_layers-str"),
    case({"num_layers": 4.0}, TypeError, r"num_layers.*integer", id="num_layers-float"),
    case({"num_layers": None}, TypeError, r"num_layers.*integer", id="num_layers-None"),
    case({"hidden_dims": 8}, TypeError, r"hidden_dims.*sequence", id="hidden_dims-int"),
    case({"hidden_dims": "8"}, TypeError, r"hidden_dims.*sequence", id="hidden_dims-str"),
    case({"hidden_dims": (0,)}, ValueError, r"hidden_dims.*>= 1", id="hidden_dims-zero"),
    case({"hidden_dims": (8, -1)}, ValueError, r"hidden_dims.*>= 1",
         id="hidden_dims-negative"),
    case({"hidden_dims": (8.0,)}, TypeError, r"hidden_dims.*integers",
         id="hidden_dims-float"),
    case({"init_scale": 0.0}, ValueError, r"init_scale.*\(0, 1e\+06\]",
         id="init_scale-zero"),
    case({"init_scale": -1.0}, ValueError, r"init_scale.*\(0, 1e\+06\]",
         id="init_scale-negative"),
    case({"init_scale": math.nan}, ValueError, r"init_scale.*\(0, 1e\+06\]",
         id="init_scale-nan"),
    case({"init_scale": math.inf}, ValueError, r"init_scale.*\(0, 1e\+06\]",
         id="init_scale-inf"),
    case({"init_scale": 1e7}, ValueError, r"init_scale.*\(0, 1e\+06\]",
         id="init_scale-huge"),
    case({"init_scale": "wide"}, ValueError, r"init_scale must be 'auto'",
         id="init_scale-unknown-str"),
    case({"scale_bound": 0.0}, ValueError, r"scale_bound.*> 0", id="scale_bound-zero"),
    case({"scale_bound": -5.0}, ValueError, r"scale_bound.*> 0",
         id="scale_bound-negative"),
    case({"scale_bound": math.inf}, ValueError, r"scale_bound.*finite",
         id="scale_bound-inf"),
    case({"scale_bound": math.nan}, ValueError, r"scale_bound.*finite",
         id="scale_bound-nan"),
    case({"scale_bound": "5"}, TypeError, r"scale_bound.*number", id="scale_bound-str"),
    case({"activation": "elu"}, TypeError, r"activation.*nn\.Module class",
         id="activation-str"),
    case({"activation": nn.ELU()}, TypeError, r"activation.*nn\.Module class",
         id="activation-instance"),
    case({"activation": torch.tanh}, TypeError, r"activation.*nn\.Module class",
         id="activation-function"),
    case({"affine": "full"}, ValueError, r"affine must be one of.*'lower'",
         id="affine-unknown"),
    case({"affine": None}, ValueError, r"affine must be one of", id="affine-None"),
    case({"estimator": "reinforce"}, ValueError, r"estimator must be one of.*'path'",
         id="estimator-unknown"),
    case({"estimator": "Path"}, ValueError, r"estimator must be one of",
         id="estimator-wrong-case"),
    case({"num_quantile_samples": 99}, ValueError, r"num_quantile_samples.*>= 100",
         id="num_quantile_samples-99"),
    case({"num_quantile_samples": 0}, ValueError, r"num_quantile_samples.*>= 100",
         id="num_quantile_samples-zero"),
    case({"num_quantile_samples": 1000.0}, TypeError, r"num_quantile_samples.*integer",
         id="num_quantile_samples-float"),
    case({"start_rule": "laplace"}, ValueError, r"start_rule must be one of.*'elbo'",
         id="start_rule-unknown"),
    case({"start_rule": None}, ValueError, r"start_rule must be one of",
         id="start_rule-None"),
    case({"init_loc_fn": "median"}, TypeError, r"init_loc_fn",
         id="init_loc_fn-str"),
    case({"init_loc_fn": 0.0}, TypeError, r"init_loc_fn", id="init_loc_fn-number"),
]  # fmt: skip


@pytest.mark.parametrize(("options", "error", "match"), GUIDE_REFUSED)
def test_autorealnvp_refuses_option_by_name(options, error, match):
    with pytest.raises(error, match=match):
        tiny_guide(**options)()


GUIDE_ACCEPTED = [
    case({"num_layers": np.int64(2)}, id="num_layers-numpy-int"),
    case({"hidden_dims": [np.int32(8), 4]}, id="hidden_dims-numpy-ints-list"),
    case({"hidden_dims": ()}, id="hidden_dims-empty-no-hidden-layer"),
    case({"hidden_dims": None}, id="hidden_dims-None-default"),
    case({"init_scale": 1e6}, id="init_scale-max"),
    case({"init_scale": np.float32(0.5)}, id="init_scale-numpy-float"),
    case({"init_scale": 1}, id="init_scale-int"),
    case({"scale_bound": 1e-3}, id="scale_bound-tiny"),
    case({"num_quantile_samples": 100}, id="num_quantile_samples-min"),
    case({"affine": "diagonal", "estimator": "total"}, id="diagonal-total"),
    case({"start_rule": "proper"}, id="start_rule-proper"),
    case({"activation": nn.Tanh}, id="activation-tanh"),
    case(
        {"init_loc_fn": init_to_value(values={"x": torch.tensor(0.5)})}, id="init_to_value-tensor"
    ),
    case(
        {"init_loc_fn": init_to_value(values={"x": 0.5})},
        id="init_to_value-float",
    ),
]


@pytest.mark.parametrize("options", GUIDE_ACCEPTED)
def test_autorealnvp_accepts_valid_edge_option(options):
    guide = tiny_guide(**options)
    draw = guide()["x"]
    quantiles = guide.quantiles([0.25, 0.75])["x"]
    assert torch.isfinite(draw)
    assert bool(quantiles[0] < quantiles[1])


@pytest.mark.parametrize("num_layers", [3, 5, np.int64(7)], ids=["3", "5", "numpy-7"])
def test_autorealnvp_warns_on_odd_num_layers(num_layers):
    with pytest.warns(UserWarning, match=rf"num_layers={num_layers} is odd.*even"):
        tiny_guide(num_layers=num_layers)


# --- fit, fit_fast, fit_distributed: numeric options ---------------------------------------

TRAINING_REFUSED = [
    case(fit, {"num_steps": 0}, ValueError, r"num_steps.*>= 1", id="fit-num_steps-0"),
    case(fit, {"num_steps": -5}, ValueError, r"num_steps.*>= 1",
         id="fit-num_steps-negative"),
    case(fit, {"num_steps": 2.0}, TypeError, r"num_steps.*integer",
         id="fit-num_steps-float"),
    case(fit, {"num_steps": "10"}, TypeError, r"num_steps.*integer",
         id="fit-num_steps-str"),
    case(fit, {"num_steps": None}, TypeError, r"num_steps.*integer",
         id="fit-num_steps-None"),
    case(fit, {"lr": 0.0}, ValueError, r"lr.*> 0", id="fit-lr-zero"),
    case(fit, {"lr": -0.01}, ValueError, r"lr.*> 0", id="fit-lr-negative"),
    case(fit, {"lr": math.nan}, ValueError, r"lr.*finite", id="fit-lr-nan"),
    case(fit, {"lr": math.inf}, ValueError, r"lr.*finite", id="fit-lr-inf"),
    case(fit, {"lr": "0.01"}, TypeError, r"lr.*number", id="fit-lr-str"),
    case(fit, {"num_particles": 0}, ValueError, r"num_particles.*>= 1",
         id="fit-num_particles-0"),
    case(fit, {"num_particles": 2.5}, TypeError, r"num_particles.*integer",
         id="fit-num_particles-float"),
    case(fit, {"lr_decay": 0.0}, ValueError, r"lr_decay.*\(0, 1\]",
         id="fit-lr_decay-zero"),
    case(fit, {"lr_decay": 1.5}, ValueError, r"lr_decay.*\(0, 1\]",
         id="fit-lr_decay-above-1"),
    case(fit, {"lr_decay": math.nan}, ValueError, r"lr_decay.*\(0, 1\]",
         id="fit-lr_decay-nan"),
    case(fit, {"clip_norm": 0.0}, ValueError, r"clip_norm.*> 0",
         id="fit-clip_norm-zero"),
    case(fit, {"clip_norm": -1.0}, ValueError, r"clip_norm.*> 0",
         id="fit-clip_norm-negative"),
    case(fit, {"clip_norm": math.nan}, ValueError, r"clip_norm.*> 0",
         id="fit-clip_norm-nan"),
    case(fit, {"max_redraws": -1}, ValueError, r"max_redraws.*>= 0",
         id="fit-max_redraws-negative"),
    case(fit, {"max_redraws": 1.5}, TypeError, r"max_redraws.*integer",
         id="fit-max_redraws-float"),
    case(fit, {"tail_beta": math.nan}, ValueError, r"tail_beta.*finite",
         id="fit-tail_beta-nan"),
    case(fit, {"tail_beta": -math.inf}, ValueError, r"tail_beta.*finite",
         id="fit-tail_beta-inf"),
    case(fit, {"tail_beta": "-1"}, TypeError, r"tail_beta.*number",
         id="fit-tail_beta-str"),
    case(fit, {"tail_fraction": -0.1}, ValueError, r"tail_fraction.*\[0, 1\]",
         id="fit-tail_fraction-negative"),
    case(fit, {"tail_fraction": 1.5}, ValueError, r"tail_fraction.*\[0, 1\]",
         id="fit-tail_fraction-above-1"),
    case(fit, {"average": 2.0}, ValueError, r"average.*\[0, 1\]",
         id="fit-average-above-1"),
    case(fit, {"average": -0.5}, ValueError, r"average.*\[0, 1\]",
         id="fit-average-negative"),
    case(fit, {"average": math.nan}, ValueError, r"average.*\[0, 1\]",
         id="fit-average-nan"),
    case(fit, {"fast": "no"}, TypeError, r"fast.*(True|bool)", id="fit-fast-str"),
    case(fit, {"compile": "fastest"}, ValueError, r"compile.*mode",
         id="fit-compile-unknown-mode"),
    case(fit, {"num_step": 10}, TypeError, r"num_step\b.*num_steps",
         id="fit-misspelt-option"),
    case(fit_fast, {"num_steps": 0}, ValueError, r"num_steps.*>= 1",
         id="fit_fast-num_steps-0"),
    case(fit_fast, {"lr": -1.0}, ValueError, r"lr.*> 0", id="fit_fast-lr-negative"),
    case(fit_fast, {"num_particles": -2}, ValueError, r"num_particles.*>= 1",
         id="fit_fast-num_particles-negative"),
    case(fit_fast, {"fast": False}, TypeError, r"fast", id="fit_fast-fast-False"),
    case(fit_distributed, {"num_particles": 0}, ValueError, r"num_particles.*>= 1",
         id="fit_distributed-num_particles-0"),
    case(fit_distributed, {"num_steps": 0}, ValueError, r"num_steps.*>= 1",
         id="fit_distributed-num_steps-0"),
    case(fit_distributed, {"lr": math.nan}, ValueError, r"lr.*finite",
         id="fit_distributed-lr-nan"),
    case(fit_distributed, {"clip_norm": 0.0}, ValueError, r"clip_norm.*> 0",
         id="fit_distributed-clip_norm-zero"),
]  # fmt: skip


@pytest.mark.parametrize(("trainer", "options", "error", "match"), TRAINING_REFUSED)
def test_training_refuses_option_by_name(trainer, options, error, match):
    with pytest.raises(error, match=match):
        trainer(model, tiny_guide(), **{"num_steps": 2, "progress": False, **options})


# --- fit: model, guide, loss, optim ----------------------------------------------------------

CALLABLES_REFUSED = [
    case(lambda g: fit(None, g, num_steps=2), TypeError, r"model must be a callable",
         id="fit-model-None"),
    case(lambda g: fit(model, "guide", num_steps=2), TypeError,
         r"guide must be a callable", id="fit-guide-str"),
    case(lambda g: fit(model, g, loss=Trace_ELBO, num_steps=2), TypeError,
         r"loss must be an ELBO instance", id="fit-loss-class"),
    case(lambda g: fit(model, g, loss="elbo", num_steps=2), TypeError,
         r"loss must be an ELBO instance", id="fit-loss-str"),
    case(lambda g: fit(model, g, optim=pyro.optim.Adam, num_steps=2), TypeError,
         r"optim must be a Pyro optimizer", id="fit-optim-class"),
    case(lambda g: fit(model, g, optim=torch.optim.Adam([torch.zeros(1)]), num_steps=2),
         TypeError, r"optim must be a Pyro optimizer", id="fit-optim-torch-instance"),
    case(lambda g: fit(model, AutoNormal(model), fast=True, num_steps=2), FastPathError,
         r"fast=True.*AutoRealNVP.*AutoNormal", id="fit-fast-True-AutoNormal"),
    case(lambda g: fit(model, g, fast=True, loss=Trace_ELBO(), num_steps=2),
         FastPathError, r"fast=True.*no loss", id="fit-fast-True-with-loss"),
    case(lambda g: fit_fast(model, AutoNormal(model), num_steps=2), FastPathError,
         r"fast=True.*AutoRealNVP", id="fit_fast-AutoNormal"),
    case(lambda g: fit_distributed(None, g, num_steps=2), TypeError,
         r"model must be a callable", id="fit_distributed-model-None"),
    case(lambda g: fit_distributed(model, g, loss=Trace_ELBO, num_steps=2), TypeError,
         r"loss must be an ELBO instance", id="fit_distributed-loss-class"),
]  # fmt: skip


@pytest.mark.parametrize(("call", "error", "match"), CALLABLES_REFUSED)
def test_training_refuses_callable_by_name(call, error, match):
    with pytest.raises(error, match=match):
        call(tiny_guide())


TRAINING_ACCEPTED = [
    case(fit, {"num_steps": np.int64(3)}, id="fit-num_steps-numpy"),
    case(fit, {"num_particles": np.int64(4)}, id="fit-num_particles-numpy"),
    case(fit, {"lr": np.float32(0.01)}, id="fit-lr-numpy"),
    case(fit, {"num_particles": 1}, id="fit-one-particle"),
    case(fit, {"clip_norm": math.inf}, id="fit-clip_norm-inf"),
    case(fit, {"lr_decay": 1.0}, id="fit-lr_decay-1"),
    case(fit, {"average": None, "tail_beta": None}, id="fit-average-None-tail-None"),
    case(fit, {"average": 0, "tail_fraction": 0}, id="fit-average-0-tail_fraction-0"),
    case(fit, {"max_redraws": 0}, id="fit-max_redraws-0"),
    case(fit, {"fast": False}, id="fit-fast-False"),
    case(fit, {"num_steps": 1}, id="fit-one-step"),
    case(fit_fast, {"num_particles": 2}, id="fit_fast-two-particles"),
    case(fit_distributed, {"num_particles": np.int64(2)},
         id="fit_distributed-num_particles-numpy"),
]  # fmt: skip


@pytest.mark.parametrize(("trainer", "options"), TRAINING_ACCEPTED)
def test_training_accepts_valid_edge_option(trainer, options):
    guide = tiny_guide()
    options = {"num_steps": 3, "progress": False, **options}
    history = trainer(model, guide, **options)
    params = [p for _, p in pyro.get_param_store().named_parameters()]
    assert len(history) == options["num_steps"]
    assert all(math.isfinite(v) for v in history)
    assert params
    assert all(bool(torch.isfinite(p).all()) for p in params)


# --- Flows, couplings and masks: constructors ------------------------------------------------

FLOW_REFUSED = [
    case(lambda: RealNVP(0), ValueError, r"input_dim.*>= 1", id="RealNVP-input_dim-0"),
    case(lambda: RealNVP(3.0), TypeError, r"input_dim.*integer",
         id="RealNVP-input_dim-float"),
    case(lambda: RealNVP(3, num_layers=0), ValueError, r"num_layers.*>= 1",
         id="RealNVP-num_layers-0"),
    case(lambda: RealNVP(3, num_layers="2"), TypeError, r"num_layers.*integer",
         id="RealNVP-num_layers-str"),
    case(lambda: RealNVP(3, 2, (0,)), ValueError, r"hidden_dims.*>= 1",
         id="RealNVP-hidden_dims-zero"),
    case(lambda: RealNVP(3, 2, "8"), TypeError, r"hidden_dims.*sequence",
         id="RealNVP-hidden_dims-str"),
    case(lambda: RealNVP(3, 2, groups=[1, 1]), ValueError, r"groups must sum to dim=3",
         id="RealNVP-groups-wrong-sum"),
    case(lambda: RealNVP(3, 2, groups=[0, 3]), ValueError, r"groups.*>= 1",
         id="RealNVP-groups-zero-size"),
    case(lambda: RealNVP(3, 2, scale_bound=0.0), ValueError, r"scale_bound.*positive",
         id="RealNVP-scale_bound-zero"),
    case(lambda: RealNVP(3, 2, scale_bound=math.inf), ValueError,
         r"scale_bound.*finite", id="RealNVP-scale_bound-inf"),
    case(lambda: RealNVP(3, 2, scale_bound=math.nan), ValueError, r"scale_bound",
         id="RealNVP-scale_bound-nan"),
    case(lambda: RealNVP(3, 2, input_bound=0.0), ValueError, r"input_bound.*positive",
         id="RealNVP-input_bound-zero"),
    case(lambda: RealNVP(3, 2, output_gain=0.0), ValueError, r"output_gain",
         id="RealNVP-output_gain-zero"),
    case(lambda: RealNVP(3, 2, output_gain=math.nan), ValueError, r"output_gain",
         id="RealNVP-output_gain-nan"),
    case(lambda: RealNVP(3, 2, context_dim=-1), ValueError, r"context_dim.*>= 0",
         id="RealNVP-context_dim-negative"),
    case(lambda: RealNVP(3, 2, activation="relu"), TypeError, r"activation",
         id="RealNVP-activation-str"),
    case(lambda: RealNVP(3, 2, mask=torch.ones(3)), TypeError, r"from_couplings",
         id="RealNVP-mask-given"),
    case(lambda: realnvp(-1), ValueError, r"input_dim.*>= 1",
         id="realnvp-input_dim-negative"),
    case(lambda: realnvp(3, num_layers=2.0), TypeError, r"num_layers.*integer",
         id="realnvp-num_layers-float"),
    case(lambda: RealNVP.from_couplings([]), ValueError, r"at least one coupling",
         id="from_couplings-empty"),
    case(lambda: MaskedAffineCoupling(torch.ones(3)), ValueError,
         r"mask keeps every coordinate", id="coupling-mask-all-ones"),
    case(lambda: MaskedAffineCoupling(torch.ones(2, 2)), ValueError,
         r"mask must be one-dimensional", id="coupling-mask-2d"),
    case(lambda: MaskedAffineCoupling(torch.tensor([0.0, 2.0])), ValueError,
         r"mask must be binary", id="coupling-mask-not-binary"),
    case(lambda: MaskedAffineCoupling(torch.tensor([0.0, math.nan])), ValueError,
         r"mask must be binary", id="coupling-mask-nan"),
    case(lambda: MaskedAffineCoupling(torch.zeros(0)), ValueError, r"mask.*empty",
         id="coupling-mask-empty"),
    case(lambda: MaskedAffineCoupling(torch.tensor([1.0, 0.0]), context_dim=1.5),
         TypeError, r"context_dim.*integer", id="coupling-context_dim-float"),
    case(lambda: masked_affine_coupling(0), ValueError, r"input_dim.*>= 1",
         id="masked_affine_coupling-input_dim-0"),
    case(lambda: masked_affine_coupling(4, parity=2), ValueError, r"parity.*0.*1",
         id="masked_affine_coupling-parity-2"),
    case(lambda: masked_affine_coupling(4, hidden_dims=(-3,)), ValueError,
         r"hidden_dims.*>= 1", id="masked_affine_coupling-hidden_dims-negative"),
    case(lambda: ConditionalRealNVP(2, 0), ValueError, r"context_dim.*>= 1",
         id="ConditionalRealNVP-context_dim-0"),
    case(lambda: ConditionalRealNVP(0, 3), ValueError, r"input_dim.*>= 1",
         id="ConditionalRealNVP-input_dim-0"),
    case(lambda: ConditionalRealNVP(2, 3, embedding=nn.Linear(3, 4)), ValueError,
         r"embedding and embedding_dim", id="ConditionalRealNVP-embedding-without-dim"),
    case(lambda: ConditionalRealNVP(2, 3, context_dim=3), TypeError,
         r"multiple values for argument 'context_dim'",
         id="ConditionalRealNVP-context_dim-twice"),
    case(lambda: multiscale_realnvp((1, 6, 6), num_scales=3), ValueError,
         r"height and width divisible by 4", id="multiscale-indivisible"),
    case(lambda: multiscale_realnvp((1, 4, 4), num_scales=0), ValueError,
         r"num_scales.*at least 1", id="multiscale-num_scales-0"),
    case(lambda: multiscale_realnvp((1, 4, 4), num_scales="2"), TypeError,
         r"num_scales.*integer", id="multiscale-num_scales-str"),
    case(lambda: multiscale_realnvp((4, 4), hidden_channels=4), ValueError,
         r"shape.*\(C, H, W\)", id="multiscale-shape-2d"),
    case(lambda: multiscale_realnvp((0, 4, 4), hidden_channels=4), ValueError,
         r"shape", id="multiscale-shape-zero-channels"),
]  # fmt: skip


@pytest.mark.parametrize(("build", "error", "match"), FLOW_REFUSED)
def test_flow_constructor_refuses_argument_by_name(build, error, match):
    with pytest.raises(error, match=match):
        build()


MASK_REFUSED = [
    case(lambda: coupling_masks(0, 2), ValueError, r"dim.*>= 1", id="coupling_masks-dim-0"),
    case(lambda: coupling_masks(4, 0), ValueError, r"num_layers.*>= 1",
         id="coupling_masks-num_layers-0"),
    case(lambda: coupling_masks(4.0, 2), TypeError, r"dim.*integer",
         id="coupling_masks-dim-float"),
    case(lambda: coupling_masks(4, 2, groups=[2, 1]), ValueError,
         r"groups must sum to dim=4", id="coupling_masks-groups-sum"),
    case(lambda: alternating_mask(-1), ValueError, r"dim.*>= 1",
         id="alternating_mask-dim-negative"),
    case(lambda: alternating_mask(2.5), TypeError, r"dim.*integer",
         id="alternating_mask-dim-float"),
    case(lambda: alternating_mask(4, parity=3), ValueError, r"parity.*0.*1",
         id="alternating_mask-parity-3"),
    case(lambda: half_mask(-2), ValueError, r"dim.*>= 1", id="half_mask-dim-negative"),
    case(lambda: half_mask(4, parity=0.5), TypeError, r"parity",
         id="half_mask-parity-float"),
    case(lambda: bit_mask(4, bit=-1), ValueError, r"bit.*>= 0",
         id="bit_mask-bit-negative"),
    case(lambda: bit_mask(4, bit=1.5), TypeError, r"bit.*integer",
         id="bit_mask-bit-float"),
    case(lambda: separating_codes([2, 2], 0), ValueError, r"num_codes.*>= 1",
         id="separating_codes-num_codes-0"),
    case(lambda: separating_codes([2, -1], 4), ValueError, r"sizes.*>= 1",
         id="separating_codes-negative-size"),
    case(lambda: checkerboard_mask(-1, 2, 2), ValueError, r"channels.*>= 1",
         id="checkerboard_mask-channels-negative"),
    case(lambda: checkerboard_mask(1, 2.0, 2), TypeError, r"height.*integer",
         id="checkerboard_mask-height-float"),
    case(lambda: channel_mask(1, 2, 2), ValueError, r"at least 2 channels",
         id="channel_mask-one-channel"),
    case(lambda: squeeze(torch.zeros(1, 3, 4)), ValueError, r"even height and width",
         id="squeeze-odd-height"),
    case(lambda: squeeze(torch.zeros(4, 4)), ValueError, r"\(\.\.\., C, H, W\)",
         id="squeeze-2d-image"),
]  # fmt: skip


@pytest.mark.parametrize(("build", "error", "match"), MASK_REFUSED)
def test_mask_helper_refuses_argument_by_name(build, error, match):
    with pytest.raises(error, match=match):
        build()


def _flow():
    return RealNVP(3, 2, (8,))


def _conditioned(context):
    return ConditionalRealNVP(2, 3, 2, (8,)).condition(context)


FLOW_ACCEPTED = [
    case(lambda: RealNVP(np.int64(3), np.int64(2), (8,)), 3, id="RealNVP-numpy-ints"),
    case(lambda: RealNVP(1, 2, (8,)), 1, id="RealNVP-one-dim"),
    case(lambda: RealNVP(3, 3, ()), 3, id="RealNVP-odd-layers-no-hidden"),
    case(lambda: realnvp(4, 2, groups=[1, 3], hidden_dims=(8,)), 4, id="realnvp-groups"),
    case(lambda: MaskedAffineCoupling([1, 0, 1]), 3, id="coupling-mask-list"),
    case(lambda: MaskedAffineCoupling(torch.tensor([True, False])), 2,
         id="coupling-mask-bool"),
    case(lambda: MaskedAffineCoupling(torch.zeros(2)), 2, id="coupling-mask-all-zeros"),
    case(lambda: masked_affine_coupling(3, (8,), parity=1), 3,
         id="masked_affine_coupling-parity-1"),
    case(lambda: multiscale_realnvp((1, 2, 2), 1, hidden_channels=4, num_blocks=1), 4,
         id="multiscale-one-scale"),
    case(lambda: _conditioned(torch.ones(3, dtype=torch.long)), 2,
         id="condition-context-integer"),
    case(lambda: _conditioned(torch.randn(5, 3)), 2, id="condition-context-per-row"),
]  # fmt: skip


@pytest.mark.parametrize(("build", "dim"), FLOW_ACCEPTED)
def test_flow_accepts_valid_edge_argument(build, dim):
    flow = build()
    x = torch.randn(5, dim)
    y = flow(x)
    assert y.shape == x.shape
    assert torch.allclose(flow.inv(y.clone()), x, atol=1e-5)


# --- Inputs passed to the transforms --------------------------------------------------------


INPUT_REFUSED = [
    case(lambda: _flow()(torch.randn(5, 4)), ValueError, r"shape \(\.\.\., 3\)",
         id="RealNVP-wrong-last-dim"),
    case(lambda: _flow()(torch.tensor(1.0)), ValueError, r"shape \(\.\.\., 3\)",
         id="RealNVP-scalar-input"),
    case(lambda: _flow().inv(torch.randn(5, 2)), ValueError, r"shape \(\.\.\., 3\)",
         id="RealNVP-inverse-wrong-last-dim"),
    case(lambda: _flow().forward_and_log_det(torch.randn(2, 5)), ValueError,
         r"shape \(\.\.\., 3\)", id="RealNVP-forward_and_log_det-wrong-dim"),
    case(lambda: _flow()(torch.randn(5, 3, dtype=torch.float64)), TypeError,
         r"float64.*float32|dtype", id="RealNVP-float64-input"),
    case(lambda: _flow()(torch.ones(5, 3, dtype=torch.long)), TypeError,
         r"floating|dtype", id="RealNVP-integer-input"),
    case(lambda: _flow()(np.zeros((5, 3), dtype=np.float32)), TypeError, r"Tensor",
         id="RealNVP-numpy-input"),
    case(lambda: masked_affine_coupling(4, (8,))(torch.randn(3, 5)), ValueError,
         r"shape \(\.\.\., 4\)", id="coupling-wrong-last-dim"),
    case(lambda: RealNVP(3, 2, (8,), context_dim=2)(torch.randn(5, 3)), ValueError,
         r"context_dim=2.*needs a context", id="RealNVP-context_dim-without-context"),
    case(lambda: _conditioned(torch.randn(4)), ValueError, r"\(\.\.\., 3\).*context_dim",
         id="condition-context-wrong-width"),
    case(lambda: _conditioned(torch.tensor(1.0)), ValueError, r"context_dim",
         id="condition-context-scalar"),
    case(lambda: _conditioned(torch.randn(4, 3))(torch.randn(5, 2)), ValueError,
         r"context must have shape.*broadcast", id="condition-context-batch-mismatch"),
    case(lambda: _conditioned(torch.ones(3, dtype=torch.float64))(torch.randn(5, 2)),
         TypeError, r"context.*(float64|dtype)", id="condition-context-float64"),
    case(lambda: _conditioned(torch.randn(3))(torch.randn(5, 3)), ValueError,
         r"shape \(\.\.\., 2\)", id="conditioned-input-wrong-last-dim"),
]  # fmt: skip


@pytest.mark.parametrize(("call", "error", "match"), INPUT_REFUSED)
def test_transform_refuses_bad_input_by_name(call, error, match):
    with pytest.raises(error, match=match):
        call()


# --- median and quantiles --------------------------------------------------------------------

LEVELS_REFUSED = [
    case([1.5], ValueError, r"quantiles must lie in \[0, 1\]", id="quantiles-above-1"),
    case([-0.1, 0.5], ValueError, r"quantiles must lie in \[0, 1\]", id="quantiles-negative"),
    case([math.nan], ValueError, r"quantiles must lie in \[0, 1\]", id="quantiles-nan"),
    case([], ValueError, r"quantiles must hold at least one", id="quantiles-empty"),
    case("0.5", TypeError, r"quantiles must be numbers", id="quantiles-str"),
    case(["a", "b"], TypeError, r"quantiles must be numbers", id="quantiles-list-of-str"),
    case(None, TypeError, r"quantiles must be numbers", id="quantiles-None"),
    case(
        torch.tensor([50.0]),
        ValueError,
        r"quantiles must lie in \[0, 1\]",
        id="quantiles-percent-not-fraction",
    ),
]


@pytest.mark.parametrize(("levels", "error", "match"), LEVELS_REFUSED)
def test_quantiles_refuse_levels_by_name(levels, error, match):
    with pytest.raises(error, match=match):
        tiny_guide().quantiles(levels)


LEVELS_ACCEPTED = [
    case(0.5, (), id="quantiles-scalar"),
    case([0.0, 1.0], (2,), id="quantiles-ends-0-and-1"),
    case(torch.tensor([[0.1, 0.9]]), (1, 2), id="quantiles-2d-tensor"),
    case(np.array([0.25, 0.75]), (2,), id="quantiles-numpy-array"),
    case(torch.tensor([0.5], dtype=torch.float64), (1,), id="quantiles-float64-tensor"),
]


@pytest.mark.parametrize(("levels", "shape"), LEVELS_ACCEPTED)
def test_quantiles_accept_valid_levels(levels, shape):
    guide = tiny_guide()
    values = guide.quantiles(levels)["x"]
    median = guide.median()["x"]
    assert values.shape == shape
    assert not bool(torch.isnan(values).any())
    assert torch.isfinite(median)


# --- psis_khat and to_inference_data ---------------------------------------------------------

DIAGNOSTIC_REFUSED = [
    case(psis_khat, {"num_samples": 5}, ValueError, r"num_samples.*>= 10",
         id="psis_khat-num_samples-5"),
    case(psis_khat, {"num_samples": "100"}, TypeError, r"num_samples.*integer",
         id="psis_khat-num_samples-str"),
    case(psis_khat, {"num_samples": 100.0}, TypeError, r"num_samples.*integer",
         id="psis_khat-num_samples-float"),
    case(psis_khat, {"num_sets": 0}, ValueError, r"num_sets.*>= 1",
         id="psis_khat-num_sets-0"),
    case(psis_khat, {"num_sets": 2.5}, TypeError, r"num_sets.*integer",
         id="psis_khat-num_sets-float"),
    case(psis_khat, {"max_plate_nesting": -1}, ValueError,
         r"max_plate_nesting.*None or an integer >= 0",
         id="psis_khat-max_plate_nesting-negative"),
    case(psis_khat, {"max_plate_nesting": "1"}, TypeError, r"max_plate_nesting",
         id="psis_khat-max_plate_nesting-str"),
    case(psis_khat, {"method": "yes"}, ValueError, r"method must be None or one of",
         id="psis_khat-method-unknown"),
    case(to_inference_data, {"method": "loop"}, ValueError, r"method must be None or one of",
         id="to_inference_data-method-unknown"),
    case(to_inference_data, {"num_samples": 0}, ValueError, r"num_samples.*>= 1",
         id="to_inference_data-num_samples-0"),
    case(to_inference_data, {"num_chains": 0}, ValueError, r"num_chains.*>= 1",
         id="to_inference_data-num_chains-0"),
    case(to_inference_data, {"num_chains": 1.5}, TypeError, r"num_chains.*integer",
         id="to_inference_data-num_chains-float"),
    case(to_inference_data, {"num_chains": True}, TypeError, r"num_chains.*integer",
         id="to_inference_data-num_chains-bool"),
    case(to_inference_data, {"max_plate_nesting": 1.0}, TypeError,
         r"max_plate_nesting", id="to_inference_data-max_plate_nesting-float"),
]  # fmt: skip


@pytest.mark.parametrize(("diagnostic", "options", "error", "match"), DIAGNOSTIC_REFUSED)
def test_diagnostic_refuses_option_by_name(diagnostic, options, error, match):
    with pytest.raises(error, match=match):
        diagnostic(model, tiny_guide(), **{"num_samples": 20, **options})


DIAGNOSTIC_CALLABLES = [
    case(
        psis_khat,
        None,
        "guide",
        id="psis_khat-guide-None",
    ),
    case(
        psis_khat,
        42,
        "model",
        id="psis_khat-model-int",
    ),
    case(
        to_inference_data,
        None,
        "guide",
        id="to_inference_data-guide-None",
    ),
]


@pytest.mark.parametrize(("diagnostic", "value", "name"), DIAGNOSTIC_CALLABLES)
def test_diagnostic_refuses_non_callable_by_name(diagnostic, value, name):
    pair = {"model": model, "guide": tiny_guide(), name: value}
    with pytest.raises(TypeError, match=rf"{name} must be a callable"):
        diagnostic(pair["model"], pair["guide"], num_samples=20)


case.check()

"""The public API: every exported name documented with a runnable example, and every name
and module path of the flat layout before the split into sub-packages still working."""

import importlib
import importlib.util
import pkgutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

import pyro_realnvp

#: Modules that need an optional extra, and the package it provides.
OPTIONAL = {"pyro_realnvp.distributed.lightning": "lightning"}
MOVED = {f"pyro_realnvp.{name}" for name in pyro_realnvp._MOVED}
MODULES = sorted(
    name
    for _, name, _ in pkgutil.walk_packages(pyro_realnvp.__path__, "pyro_realnvp.")
    if name not in MOVED and (name not in OPTIONAL or importlib.util.find_spec(OPTIONAL[name]))
)
PUBLIC = [
    (module, name)
    for module in MODULES
    if "._" not in module
    for name in importlib.import_module(module).__all__
]
#: ``__all__`` of each module at 897fef0, the last commit of the flat layout.
FLAT_LAYOUT = {
    "averaging": ["AVERAGE", "AveragedStep"],
    "conditional": ["ConditionalRealNVP", "ConditionedRealNVP", "conditional_realnvp"],
    "coupling": ["MaskedAffineCoupling", "default_hidden_dims", "masked_affine_coupling"],
    "ddp": ["DataParallelELBO", "fit_distributed", "setup_guide"],
    "distributed": [
        "Blocks",
        "FiniteStepFlag",
        "RankFailedError",
        "data_plate",
        "is_main_process",
        "load_checkpoint",
        "max_parameter_divergence",
        "process_group",
        "rank",
        "save_checkpoint",
        "seed_rank",
        "shard",
        "world_size",
    ],
    "fast": ["FastELBO", "FastPathError", "FastStep", "particles_for"],
    "finite": ["FiniteELBO", "explain_non_finite", "usability"],
    "flat": ["FlatParameters"],
    "flow": ["RealNVP", "realnvp"],
    "guide": ["AutoRealNVP"],
    "image": [
        "ConvConditioner",
        "channel_mask",
        "checkerboard_mask",
        "multiscale_realnvp",
        "squeeze",
    ],
    "infer": [
        "FiniteELBO",
        "NonFiniteLossError",
        "SVIStep",
        "explain_non_finite",
        "fit",
        "fit_fast",
    ],
    "init_checks": [
        "check_init_value_names",
        "check_init_values",
        "format_values",
        "init_value_names",
        "init_values_error",
        "partial_trace",
        "raised_by_init_strategy",
        "unsampleable_error",
    ],
    "laplace": [
        "GaussianStart",
        "START_RULES",
        "covariance_factor",
        "find_mode",
        "gaussian_elbo",
        "hessian",
        "laplace_start",
        "local_start",
    ],
    "lightning": ["SVIModule"],
    "losses": [
        "LATE_TAIL_FRACTION",
        "LATE_TAIL_GAIN",
        "TAIL_BETA",
        "check_beta",
        "check_late_beta",
        "particle_objective",
        "tail_adaptive_weights",
        "tail_schedule",
    ],
    "masks": [
        "alternating_mask",
        "bit_mask",
        "check_mask",
        "coupling_masks",
        "half_mask",
        "separating_codes",
    ],
    "nn": ["ScaledLinear", "conditioner", "mlp_call", "soft_clamp"],
    "one_pass": ["OnePassLogDet"],
    "potential": ["Potential", "subsampled_sites"],
    "score": ["ACTIVATION_VJPS", "conditioner_vjp", "recorded_call", "supports_score"],
    "start_units": ["StartUnits"],
    "train": [
        "History",
        "NonFiniteLossError",
        "NormClippedAdam",
        "Schedule",
        "Step",
        "TrainingInterrupted",
        "check_training_args",
        "clip_total_norm",
        "train",
    ],
    "density": [
        "anomaly_scores",
        "bits_per_dim",
        "dequantize",
        "fit_density",
        "flow_distribution",
    ],
    "diagnostics": ["KHat", "khat_reading", "psis_khat", "to_inference_data"],
    "plots": ["plot_loss", "plot_pair"],
}
#: The package's ``__all__`` at 897fef0.
TOP_LEVEL = [
    "AutoRealNVP", "ConditionalRealNVP", "ConditionedRealNVP", "ConvConditioner",
    "DataParallelELBO", "FastELBO", "FastPathError", "FiniteELBO", "History", "KHat",
    "MaskedAffineCoupling", "NonFiniteLossError", "RankFailedError", "RealNVP",
    "TrainingInterrupted", "alternating_mask", "anomaly_scores", "channel_mask",
    "checkerboard_mask", "bit_mask", "bits_per_dim", "conditional_realnvp", "coupling_masks",
    "dequantize", "fit", "fit_density", "fit_distributed", "fit_fast", "flow_distribution",
    "half_mask", "khat_reading", "masked_affine_coupling", "multiscale_realnvp",
    "particle_objective", "plot_loss", "plot_pair", "psis_khat", "realnvp",
    "separating_codes", "squeeze", "tail_adaptive_weights", "to_inference_data",
]  # fmt: skip


@pytest.mark.parametrize(("module", "name"), PUBLIC, ids=[f"{m}.{n}" for m, n in PUBLIC])
def test_public_name_has_a_doctest_example(module, name):
    obj = getattr(importlib.import_module(module), name)
    if not callable(obj):
        pytest.skip("constant")
    assert obj.__doc__, f"{module}.{name} has no docstring"
    assert ">>>" in obj.__doc__, f"{module}.{name} has no runnable example"


@pytest.mark.parametrize("module", [m for m in MODULES if "._" not in m])
def test_every_public_module_says_what_it_exports(module):
    assert isinstance(importlib.import_module(module).__all__, list | tuple)


def test_every_name_of_the_flat_layout_still_imports_from_the_package():
    assert set(TOP_LEVEL) <= set(pyro_realnvp.__all__)
    for name in TOP_LEVEL:
        assert hasattr(pyro_realnvp, name), name


@pytest.mark.parametrize("old", sorted(FLAT_LAYOUT))
def test_every_module_path_of_the_flat_layout_still_works(old):
    path = f"pyro_realnvp.{old}"
    sys.modules.pop(path, None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if old == "lightning":
            pytest.importorskip("lightning")
        __import__(path)  # a builtin, so the warning's frame is this line's, as for `import`
        module = sys.modules[path]
    names = FLAT_LAYOUT[old]
    assert all(hasattr(module, name) for name in names), path
    moved = [w for w in caught if issubclass(w.category, DeprecationWarning)]
    if path in MOVED:
        assert len(moved) == 1, path
        assert f"{path} moved to pyro_realnvp." in str(moved[0].message)
        assert moved[0].filename == __file__  # the importer's line, not the alias's
        assert set(names) <= set(module.__all__)
    else:  # a module or package of the new layout under the same name
        assert moved == [], path


def test_an_old_module_as_an_attribute_of_the_package_warns_at_that_line_and_resolves():
    sys.modules.pop("pyro_realnvp.ddp", None)
    vars(pyro_realnvp).pop("ddp", None)
    with pytest.warns(DeprecationWarning, match="pyro_realnvp.ddp moved") as caught:
        fit_distributed = pyro_realnvp.ddp.fit_distributed
    assert fit_distributed is pyro_realnvp.fit_distributed
    assert [w.filename for w in caught] == [__file__]


def test_the_optional_lightning_module_is_no_attribute_of_the_package():
    assert getattr(pyro_realnvp, "lightning", None) is None or "lightning" in sys.modules


def test_a_guide_pickled_before_the_split_loads_and_summarises_as_it_did():
    # tests/data/guide_897fef0.pt: AutoRealNVP(num_layers=2, hidden_dims=(4,)) of
    # x ~ N(1, 2), s ~ LogNormal(0, 0.5) after 50 steps of fit, saved at 897fef0.
    import torch

    with warnings.catch_warnings():  # it names the old modules: the aliases warn
        warnings.simplefilter("ignore", DeprecationWarning)
        guide = torch.load(Path(__file__).parent / "data" / "guide_897fef0.pt", weights_only=False)
    quantiles = guide.quantiles([0.25, 0.5, 0.75])
    torch.testing.assert_close(quantiles["x"], torch.tensor([-0.36980969, 0.94136655, 2.30070019]))
    torch.testing.assert_close(quantiles["s"], torch.tensor([0.70581609, 1.00137091, 1.41422021]))


def test_importing_the_package_imports_no_extra_and_warns_nothing():
    code = (
        "import sys, warnings; warnings.simplefilter('error'); import pyro_realnvp; "
        "print(sorted(m for m in ('lightning', 'matplotlib', 'arviz', 'zuko') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_importing_changes_no_torch_default():
    import torch

    assert torch.get_default_dtype() == torch.float32
    assert torch.empty(0).device.type == "cpu"

"""Smoke runs of the density-estimation and NPE examples, with checks on their numbers."""

import importlib.util
import math
from pathlib import Path

import pytest
from matplotlib.image import imread

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def load(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def two_moons_smoke():
    pytest.importorskip("sklearn")
    example = load("density_two_moons")
    argv = ["--num-steps", "150", "--num-layers", "4", "--num-data", "500", "--no-progress"]
    return example.main(example.parse_args(argv))


def test_two_moons_density_integrates_to_one(two_moons_smoke):
    assert abs(two_moons_smoke["mass_on_grid"] - 1) < 0.01


def test_two_moons_anomaly_scores_separate_outliers(two_moons_smoke):
    assert two_moons_smoke["anomaly_auc"] > 0.8


def test_two_moons_flow_beats_a_single_gaussian(two_moons_smoke):
    # A standard normal on standardised moons scores about -2.7 nats; learning must help.
    assert two_moons_smoke["flow_test_loglik"] > -2.0


@pytest.mark.slow
def test_two_moons_flow_matches_a_10_component_gmm():
    pytest.importorskip("sklearn")
    example = load("density_two_moons")
    results = example.main(example.parse_args(["--no-progress"]))
    assert results["flow_test_loglik"] >= results["gmm_test_loglik"]


def test_npe_posterior_close_to_exact():
    example = load("npe_conjugate")
    argv = ["--num-steps", "200", "--num-sims", "2000", "--num-draws", "1000", "--no-progress"]
    results = example.main(example.parse_args(argv))
    # The untrained (identity) flow is off by about 3 posterior sd in mean and 130% in sd.
    assert results["mean_error_in_posterior_sd"] < 0.5
    assert results["std_relative_error"] < 0.25


@pytest.mark.parametrize("architecture", ["multiscale", "vector"])
def test_digits_flow_beats_the_diagonal_gaussian_and_saves_a_grid(tmp_path, architecture):
    pytest.importorskip("sklearn")
    example = load("digits")
    png = tmp_path / "samples.png"
    argv = ["--num-steps", "40", "--num-layers", "4", "--samples", str(png), "--no-progress"]
    argv += ["--architecture", architecture, "--hidden-channels", "16", "--num-blocks", "1"]
    results = example.main(example.parse_args(argv))
    assert results["realnvp_bits_per_dim"] < results["diagonal_gaussian_bits_per_dim"]
    assert results["diagonal_gaussian_bits_per_dim"] < math.log2(17)  # the uniform density
    assert imread(png).shape[:2] == (8 * 8 * 4, 8 * 8 * 4)  # 8x8 images of 8x8 pixels, zoomed

"""Every example runs in smoke mode, prints its k-hat, writes its figures, and is sane."""

import contextlib
import importlib.util
import io
import math
import re
from pathlib import Path

import pytest
import torch

from pyro_realnvp import KHat

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

#: Command-line arguments of each example's smoke run: few steps, small flows.
SMOKE = {
    "funnel": ["--num-steps", "30", "--num-layers", "2"],
    "eight_schools": [
        "--num-steps", "30", "--num-layers", "2", "--num-draws", "200",
        "--num-warmup", "20", "--num-samples", "20", "--max-tree-depth", "5",
    ],
    "logistic_regression": ["--num-steps", "30", "--num-layers", "2", "--num-draws", "200"],
    "hierarchical_cuda": [
        "--num-steps", "20", "--num-layers", "2", "--num-draws", "200", "--groups", "10",
    ],
}  # fmt: skip
#: Optional packages an example needs (the ``examples`` extra).
NEEDS = {"logistic_regression": "sklearn"}
#: What each example's smoke run must show, beyond finite numbers and figures.
CHECKS = {
    "funnel": lambda rows: rows["AutoRealNVP"]["KL(q||p)"] < rows["AutoNormal"]["KL(q||p)"],
    "eight_schools": lambda rows: 0 < rows["NUTS"]["sd log tau"],
    "logistic_regression": lambda rows: rows["AutoRealNVP"]["test accuracy"] > 0.85,
    "hierarchical_cuda": lambda rows: (
        rows["AutoRealNVP"]["on CUDA"] == float(torch.cuda.is_available())
    ),
}


def load(name):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module", params=sorted(SMOKE), ids=sorted(SMOKE))
def smoke(request, tmp_path_factory):
    """Run one example in smoke mode: its name, returned rows, output folder and stdout."""
    name = request.param
    if name in NEEDS:
        pytest.importorskip(NEEDS[name], reason=f"examples/{name}.py needs {NEEDS[name]}")
    out_dir = tmp_path_factory.mktemp(name)
    example = load(name)
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        rows = example.main(
            example.parse_args([*SMOKE[name], "--no-progress", "--out-dir", str(out_dir)])
        )
    return name, rows, out_dir, stdout.getvalue()


# Examples whose smoke runs live beside the feature they show.
SMOKED_ELSEWHERE = {
    "density_two_moons": "test_density_examples.py",
    "digits": "test_density_examples.py",
    "npe_conjugate": "test_density_examples.py",
    "distributed_logistic_regression": "distributed/test_distributed.py",
    "lightning_logistic_regression": "distributed/test_lightning.py",
}


def test_every_example_has_a_smoke_run():
    assert sorted(p.stem for p in EXAMPLES.glob("*.py")) == sorted({*SMOKE, *SMOKED_ELSEWHERE})
    tests = Path(__file__).parent
    for name, test_file in SMOKED_ELSEWHERE.items():
        assert f"{name}" in (tests / test_file).read_text(), f"{name} has no smoke run"


@pytest.mark.parametrize("script", sorted(EXAMPLES.glob("*.py")), ids=lambda p: p.stem)
def test_an_example_writes_under_out_by_default(script):
    defaults = re.findall(r'"--out-dir",\s*default="([^"]*)"', script.read_text())
    assert all(default.startswith("out/") for default in defaults), defaults


def test_results_are_finite(smoke):
    _, rows, _, _ = smoke
    values = [value for row in rows.values() for value in row.values()]
    assert values
    assert all(math.isfinite(value) for value in values)


def test_every_guide_reports_its_khat(smoke):
    _, rows, _, stdout = smoke
    guides = [row for name, row in rows.items() if name.startswith("Auto")]
    assert guides
    assert all(isinstance(row["PSIS k-hat"], KHat) for row in guides)
    assert "k-hat" in stdout


def test_figures_are_written(smoke):
    _, _, out_dir, _ = smoke
    figures = sorted(out_dir.glob("*.png"))
    assert figures
    assert all(path.stat().st_size > 1000 for path in figures)


def test_results_make_sense(smoke):
    name, rows, _, _ = smoke
    assert CHECKS[name](rows), rows

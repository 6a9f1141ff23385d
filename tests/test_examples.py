"""Every example runs in smoke mode and its results are sane."""

import importlib.util
import math
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def load(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_funnel_smoke(capsys):
    funnel = load("funnel")
    rows = funnel.main(funnel.parse_args(["--num-steps", "30", "--no-progress"]))
    assert set(rows) == {"AutoNormal", "AutoRealNVP"}
    assert all(math.isfinite(v) for row in rows.values() for v in row.values())
    assert "KL" in capsys.readouterr().out


@pytest.mark.parametrize("name", sorted(p.stem for p in EXAMPLES.glob("*.py")))
def test_every_example_has_main_and_num_steps(name):
    module = load(name)
    assert callable(module.main)
    assert "--num-steps" in module.parse_args.__code__.co_consts or hasattr(module, "parse_args")

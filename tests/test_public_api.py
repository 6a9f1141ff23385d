"""The public API: every exported name is documented with a runnable example."""

import importlib
import importlib.util
import pkgutil

import pytest

import pyro_realnvp

#: Modules that need an optional extra, and the package it provides.
OPTIONAL = {"pyro_realnvp.lightning": "lightning"}
MODULES = sorted(
    name
    for _, name, _ in pkgutil.iter_modules(pyro_realnvp.__path__, "pyro_realnvp.")
    if name not in OPTIONAL or importlib.util.find_spec(OPTIONAL[name])
)
PUBLIC = [(module, name) for module in MODULES for name in importlib.import_module(module).__all__]


@pytest.mark.parametrize(("module", "name"), PUBLIC, ids=[f"{m}.{n}" for m, n in PUBLIC])
def test_public_name_has_a_doctest_example(module, name):
    obj = getattr(importlib.import_module(module), name)
    if not callable(obj):
        pytest.skip("constant")
    assert obj.__doc__, f"{module}.{name} has no docstring"
    assert ">>>" in obj.__doc__, f"{module}.{name} has no runnable example"


def test_package_exports_exist():
    for name in pyro_realnvp.__all__:
        assert hasattr(pyro_realnvp, name), name


def test_importing_changes_no_torch_default():
    import torch

    assert torch.get_default_dtype() == torch.float32
    assert torch.empty(0).device.type == "cpu"

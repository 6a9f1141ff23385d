"""The package's layout, checked: layers that import only downward, a shallow import graph,
and rooms of a livable size (docs/architecture.md)."""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

import pytest

import pyro_realnvp

PACKAGE = Path(pyro_realnvp.__file__).parent
#: Each part of the package and its layer; a module imports only from lower layers, or
#: from its own sub-package. ``errors`` and ``_internal`` are beneath every layer.
LAYERS = {
    "_internal": 0,
    "errors": 0,
    "flows": 1,
    "guide": 2,
    "infer": 3,
    "distributed": 4,
    "density": 4,
    "diagnostics": 4,
    "plots": 4,
    "": 5,  # the package's own __init__: its public names
}
MAX_LEVELS = 7
LIMITS = {"module": 500, "class": 400, "function": 60, "docstring": 40}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {
    module_name(path): path
    for path in sorted(PACKAGE.rglob("*.py"))
    if path.stem not in pyro_realnvp._MOVED or path.parent != PACKAGE  # not an alias
}


def part(module: str) -> str:
    """``flows`` for ``pyro_realnvp.flows.coupling``; ``""`` for the package itself."""
    return module.split(".")[1] if "." in module else ""


@cache
def imports(module: str) -> frozenset[str]:
    """The package's modules that ``module`` imports, anywhere in its source."""
    path = MODULES[module]
    base = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            target = node.module or ""
            if node.level:
                target = ".".join(
                    base[: len(base) - node.level + 1] + ([target] if target else [])
                )
            for alias in node.names:
                full = f"{target}.{alias.name}"
                found.add(full if full in MODULES else target)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return frozenset(name for name in found if name in MODULES and name != module)


def external_imports(module: str) -> set[str]:
    tree = ast.parse(MODULES[module].read_text())
    found = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    found |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and not n.level}
    return {name for name in found if name and not name.startswith("pyro_realnvp")}


def level(module: str, path: tuple[str, ...] = ()) -> int:
    """1 for a module that imports none of the package's, else one above its highest import."""
    assert module not in path, f"import cycle: {' -> '.join((*path, module))}"
    return 1 + max((level(other, (*path, module)) for other in imports(module)), default=0)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_a_module_imports_only_from_lower_layers_or_its_own_sub_package(module):
    for other in imports(module):
        same = part(other) == part(module)
        assert same or LAYERS[part(other)] < LAYERS[part(module)], f"{module} imports {other}"


def test_the_import_graph_has_no_cycle_and_few_levels():
    levels = {module: level(module) for module in MODULES}
    deepest = max(levels, key=levels.get)
    assert levels[deepest] <= MAX_LEVELS, f"{deepest} stands at level {levels[deepest]}"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if part(m) == "flows"))
def test_the_flows_know_nothing_of_inference_or_training(module):
    assert not {m for m in external_imports(module) if m.startswith(("pyro.infer", "tqdm"))}


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_reaches_another_sub_packages_private_names(module):
    tree = ast.parse(MODULES[module].read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level and node.module:
            target = [m for m in imports(module) if m.endswith(node.module.split(".")[-1])]
            foreign = any(part(m) not in (part(module), "_internal") for m in target)
            private = [a.name for a in node.names if a.name.startswith("_")]
            assert not (foreign and private), f"{module} imports {private} from {node.module}"


@cache
def private_names(sub_package: str) -> frozenset[str]:
    """The underscore names a sub-package defines: its classes' private methods and
    attributes (``self._x = ...``), and its modules' private functions."""
    found = set()
    for module in (m for m in MODULES if part(m) == sub_package):
        for node in ast.walk(ast.parse(MODULES[module].read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                found.add(node.name)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                found.add(node.attr)
    return frozenset(n for n in found if n.startswith("_") and not n.startswith("__"))


def on_itself(node: ast.Attribute) -> bool:
    """``self._x``, ``cls._x`` or ``super()._x``: an object's own attribute."""
    value = node.value
    if isinstance(value, ast.Call):
        return isinstance(value.func, ast.Name) and value.func.id == "super"
    return isinstance(value, ast.Name) and value.id in ("self", "cls")


@pytest.mark.parametrize("module", sorted(m for m in MODULES if part(m) != "_internal"))
def test_no_module_calls_another_sub_packages_private_attributes(module):
    # _internal is where calls into private names are meant to live (its compat module).
    own = private_names(part(module)) | private_names("_internal")
    others = set().union(*(private_names(p) for p in LAYERS if p != part(module))) - own
    reached = {
        node.attr
        for node in ast.walk(ast.parse(MODULES[module].read_text()))
        if isinstance(node, ast.Attribute) and node.attr in others and not on_itself(node)
    }
    assert reached == set(), f"{module} reaches {sorted(reached)} of another sub-package"


def sizes(module: str):
    """``(what, name, lines)`` of the module, its classes, functions and docstrings."""
    text = MODULES[module].read_text()
    tree = ast.parse(text)
    yield "module", module, len(text.splitlines())
    for node in [tree, *ast.walk(tree)]:
        if isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            kind = "class" if isinstance(node, ast.ClassDef) else "function"
            yield kind, node.name, node.end_lineno - node.lineno + 1
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            docstring = ast.get_docstring(node, clean=False)
            if docstring:
                yield "docstring", getattr(node, "name", module), len(docstring.splitlines())


@pytest.mark.parametrize("module", sorted(MODULES))
def test_rooms_stay_livable(module):
    too_large = [(k, n, lines) for k, n, lines in sizes(module) if lines > LIMITS[k]]
    assert too_large == [], f"over {LIMITS}"

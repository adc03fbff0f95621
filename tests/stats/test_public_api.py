"""``modelfleet.stats`` names its API in one sorted ``__all__`` and stays in layer 1."""

import ast
import importlib
import pkgutil
import sys
from pathlib import Path

import modelfleet.stats

# Helper modules whose names are internal by design: array checks, SciPy doors, raw boundaries.
INTERNAL = {"_arrays", "_boundary", "_scipy"}
ALLOWED_ROOTS = {"numpy", "scipy", "modelfleet"}
ALLOWED_MODELFLEET = ("modelfleet.stats", "modelfleet.errors", "modelfleet.config", "modelfleet.clock")


def isort_order(name):
    kind = 0 if name.isupper() else 1 if name[:1].isupper() else 2
    return kind, name


def stats_modules():
    return [info.name for info in pkgutil.iter_modules(modelfleet.stats.__path__)]


def test_all_is_sorted_unique_and_resolves():
    exported = list(modelfleet.stats.__all__)
    assert exported == sorted(exported, key=isort_order)
    assert len(set(exported)) == len(exported)
    assert [name for name in exported if not hasattr(modelfleet.stats, name)] == []


def test_every_public_name_of_the_private_modules_is_reexported():
    for name in set(stats_modules()) - INTERNAL:
        module = importlib.import_module(f"modelfleet.stats.{name}")
        missing = set(module.__all__) - set(modelfleet.stats.__all__)
        assert missing == set(), f"{name} exports {sorted(missing)} that modelfleet.stats does not"


def test_stats_imports_only_numpy_scipy_the_standard_library_and_layer_zero():
    for path in Path(modelfleet.stats.__file__).parent.glob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                root = name.split(".")[0]
                assert root in ALLOWED_ROOTS | sys.stdlib_module_names, f"{path.name} imports {name}"
                if root == "modelfleet":
                    assert name.startswith(ALLOWED_MODELFLEET), f"{path.name} imports {name}"

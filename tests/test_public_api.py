"""Each public package names its API in one sorted ``__all__`` and every name resolves."""

import importlib

import pytest


def isort_order(name: str) -> tuple[int, str]:
    """Constants, then classes, then functions, as ruff's RUF022 sorts ``__all__``."""
    kind = 0 if name.isupper() else 1 if name[:1].isupper() else 2
    return kind, name


PUBLIC_MODULES = [
    "modelfleet",
    "modelfleet.agent",
    "modelfleet.bundle",
    "modelfleet.bundle.delta",
    "modelfleet.clock",
    "modelfleet.config",
    "modelfleet.errors",
    "modelfleet.protocol",
    "modelfleet.rollout",
    "modelfleet.server",
    "modelfleet.sim",
    "modelfleet.sim.models",
    "modelfleet.stats",
    "modelfleet.store",
    "modelfleet.telemetry",
]


@pytest.mark.parametrize("name", PUBLIC_MODULES)
def test_all_is_sorted_and_unique(name):
    module = importlib.import_module(name)
    exported = list(module.__all__)
    assert exported == sorted(exported, key=isort_order), f"{name}.__all__ is not sorted"
    assert len(set(exported)) == len(exported), f"{name}.__all__ has duplicates"


@pytest.mark.parametrize("name", PUBLIC_MODULES)
def test_every_exported_name_exists(name):
    module = importlib.import_module(name)
    missing = [attr for attr in module.__all__ if not hasattr(module, attr)]
    assert missing == []


def test_bundle_exports_every_public_name_of_its_private_modules():
    bundle = importlib.import_module("modelfleet.bundle")
    # Modules whose whole __all__ is public API; the builder's helper modules are internal.
    private = ["_build", "_canonical", "_compat", "_container", "_manifest", "_signing"]
    for module_name in private:
        module = importlib.import_module(f"modelfleet.bundle.{module_name}")
        not_reexported = set(module.__all__) - set(bundle.__all__)
        assert not_reexported <= {"tar_header"}, f"{module_name} exports {sorted(not_reexported)} not re-exported"

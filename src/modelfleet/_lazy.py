"""PEP 562 lazy exports: a package maps each public name to the private module defining it.

``modelfleet.agent``, ``bundle``, ``telemetry`` and ``sim`` import their heavy
modules (numpy, ONNX, ONNX Runtime, the simulator) only when a name from them is
first used, so an idle device agent does not hold them.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(package: str, exports: Mapping[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for ``package``, whose name ``n`` lives in ``package.<exports[n]>``.

    A name is imported once, then kept in the package's namespace.
    """

    def __getattr__(name: str) -> Any:  # noqa: ANN401, N807 - any exported object; PEP 562's name
        module = exports.get(name)
        if module is None:
            msg = f"module {package!r} has no attribute {name!r}"
            raise AttributeError(msg)
        value = getattr(importlib.import_module(f"{package}.{module}"), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:  # noqa: N807 - PEP 562's name
        namespace = sys.modules[package]
        return sorted({*vars(namespace), *getattr(namespace, "__all__", ())})

    return __getattr__, __dir__

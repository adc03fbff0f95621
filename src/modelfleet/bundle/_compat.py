"""Does a bundle fit a device and the application that feeds it? Pure, no I/O.

The device checks this before download and again before activation (DESIGN §3).
:func:`check_compatibility` returns *every* mismatch, never only the first, so one
refusal reported to the server says all that has to change. The order is fixed:
contract (inputs, outputs, preprocessing, quantization), then runtime, then
hardware; within a kind, the order of the manifest (tags by name).

Tensors are matched by name, as in an MLflow model signature. A consumer's fixed
dimension needs exactly that size from the producer; a consumer's symbolic
dimension (a name or ``?``) accepts any size. For inputs the model consumes what
the application produces; for outputs the application consumes what the model
produces, so an application that reads a fixed size from a symbolic output
dimension does not fit, unless the application fixes that dimension through the
inputs (it feeds ``X`` as ``[1, 64]``, so the model's ``N`` is 1 and an output
``[N, 10]`` is ``[1, 10]``). Every ``?`` stands alone.

In an :class:`Incompatibility`, ``expected`` is what a fit requires and ``actual``
what was found: for inputs, device and preprocessing the bundle's requirement
against the device or application; for outputs the application's requirement
against what the model produces.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Annotated, Literal, get_args

from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version
from pydantic import BaseModel, ConfigDict, Field, model_validator

from modelfleet.bundle._manifest import (
    Contract,
    HardwareTargets,
    Manifest,
    Preprocessing,
    RuntimeRequirement,
    TensorSpec,
)
from modelfleet.errors import IncompatibleError

__all__ = [
    "AppContract",
    "DeviceProfile",
    "Incompatibility",
    "IncompatibilityCode",
    "PreprocessingRef",
    "check_compatibility",
    "require_compatible",
]

IncompatibilityCode = Literal[
    "missing_input",
    "unexpected_input",
    "input_dtype",
    "input_rank",
    "input_shape",
    "missing_output",
    "output_dtype",
    "output_shape",
    "preprocessing_id",
    "preprocessing_version",
    "preprocessing_missing",
    "quantization",
    "runtime_missing",
    "runtime_version",
    "arch",
    "device_type",
    "tag",
    "ram",
    "disk",
    "accelerator",
]
"""Stable reason codes, in the order :func:`check_compatibility` reports them."""

_CODE_ORDER = {code: rank for rank, code in enumerate(get_args(IncompatibilityCode))}

# What platform.machine() says on other systems for the same instruction set.
_ARCH_ALIASES = {"amd64": "x86_64", "x64": "x86_64", "arm64": "aarch64"}

_Name = Annotated[str, Field(min_length=1, max_length=128)]
_Value = Annotated[str, Field(max_length=256)]
_Tensors = Annotated[tuple[TensorSpec, ...], Field(max_length=256)]


class _Declared(BaseModel):
    """Strict, frozen, closed: what a device or application declares about itself."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class DeviceProfile(_Declared):
    """What a device is: architecture, runtimes, memory, disk, tags, accelerators."""

    arch: _Name
    device_type: _Name | None = None
    runtimes: dict[_Name, _Value] = Field(default_factory=dict, max_length=64)
    ram_bytes: int = Field(ge=0)
    disk_free_bytes: int = Field(ge=0)
    tags: dict[_Name, _Value] = Field(default_factory=dict, max_length=256)
    accelerators: tuple[_Name, ...] = Field(default=(), max_length=32)
    quantization: tuple[_Name, ...] = Field(default=("none", "int8"), max_length=16)


class PreprocessingRef(_Declared):
    """The preprocessing an application applies: its id and version."""

    id: str = Field(min_length=1, max_length=128)
    version: int = Field(ge=1)


class AppContract(_Declared):
    """What the application feeds the model and, optionally, what it reads back."""

    inputs: _Tensors = Field(min_length=1)
    outputs: _Tensors | None = None
    preprocessing: PreprocessingRef | None = None

    @model_validator(mode="after")
    def _unique_names(self) -> AppContract:
        for kind, tensors in (("inputs", self.inputs), ("outputs", self.outputs or ())):
            names = [t.name for t in tensors]
            if len(set(names)) != len(names):
                msg = f"{kind} names must be unique, got {names}"
                raise ValueError(msg)
        return self


@dataclass(frozen=True, slots=True)
class Incompatibility:
    """One reason a bundle does not fit: a stable code, where, and both sides."""

    code: IncompatibilityCode
    field: str
    expected: str
    actual: str

    def __str__(self) -> str:
        return _one_line(f"{self.field}: expected {self.expected}, actual {self.actual} [{self.code}]")


def check_compatibility(
    manifest: Manifest, device: DeviceProfile, app: AppContract | None = None
) -> tuple[Incompatibility, ...]:
    """Return every reason ``manifest`` does not fit ``device`` and ``app``; ``()`` if it fits.

    Args:
        manifest: the bundle's (verified) manifest.
        device: what the device declares about itself.
        app: what the application feeds and reads; ``None`` skips the tensor and
            preprocessing checks.
    """
    contract = manifest.contract
    found = [
        *(_application(contract, app) if app is not None else ()),
        *_quantization(contract, device),
        *_runtime(contract.runtime, device.runtimes),
        *_hardware(contract.hardware, manifest.payload_bytes, device),
    ]
    return tuple(sorted(found, key=lambda reason: _CODE_ORDER[reason.code]))


def require_compatible(manifest: Manifest, device: DeviceProfile, app: AppContract | None = None) -> None:
    """Refuse a bundle that does not fit, naming every reason.

    Raises:
        IncompatibleError: with ``reasons`` holding every :class:`Incompatibility`.
    """
    reasons = check_compatibility(manifest, device, app)
    if reasons:
        problems = "problem" if len(reasons) == 1 else "problems"
        lines = "".join(f"\n  - {reason}" for reason in reasons)
        msg = f"bundle {manifest.name} {manifest.version} does not fit ({len(reasons)} {problems}):{lines}"
        raise IncompatibleError(msg, reasons=reasons, code="incompatible")


# ---------------------------------------------------------------- application


def _application(contract: Contract, app: AppContract) -> Iterator[Incompatibility]:
    """Check tensors and preprocessing against what the application declares."""
    yield from _inputs(contract.inputs, app.inputs)
    if app.outputs is not None:
        yield from _outputs(contract.outputs, app.outputs, _bindings(contract.inputs, app.inputs))
    yield from _preprocessing(contract.preprocessing, app.preprocessing)


def _inputs(declared: tuple[TensorSpec, ...], fed: tuple[TensorSpec, ...]) -> Iterator[Incompatibility]:
    """The model consumes each declared input; the application must feed exactly those."""
    by_name = {t.name: t for t in fed}
    for spec in declared:
        yield from _input(spec, by_name.get(spec.name))
    names = {t.name for t in declared}
    takes = ", ".join(sorted(names))
    for sent in fed:
        if sent.name not in names:
            where, expected = f"contract.inputs[{sent.name}]", f"no such input (the model takes {takes})"
            yield Incompatibility("unexpected_input", where, expected, sent.describe())


def _input(spec: TensorSpec, sent: TensorSpec | None) -> Iterator[Incompatibility]:
    """One input the model takes against what the application feeds under its name."""
    where = f"contract.inputs[{spec.name}]"
    if sent is None:
        yield Incompatibility("missing_input", where, spec.describe(), "not fed by the application")
        return
    if sent.dtype != spec.dtype:
        yield Incompatibility("input_dtype", f"{where}.dtype", spec.dtype, sent.dtype)
    if len(sent.shape) != len(spec.shape):
        yield Incompatibility("input_rank", f"{where}.shape", _rank_text(spec.shape), _rank_text(sent.shape))
        return
    yield from _dims("input_shape", where, spec.shape, tuple((dim, _dim_text(dim)) for dim in sent.shape))


def _outputs(
    produced: tuple[TensorSpec, ...], read: tuple[TensorSpec, ...], bindings: Mapping[str, int]
) -> Iterator[Incompatibility]:
    """The application consumes the outputs it reads; the model must produce them."""
    by_name = {t.name: t for t in produced}
    for wanted in read:
        where = f"contract.outputs[{wanted.name}]"
        spec = by_name.get(wanted.name)
        if spec is None:
            yield Incompatibility("missing_output", where, wanted.describe(), "the model has no such output")
            continue
        if spec.dtype != wanted.dtype:
            yield Incompatibility("output_dtype", f"{where}.dtype", wanted.dtype, spec.dtype)
        if len(spec.shape) != len(wanted.shape):
            yield Incompatibility("output_shape", f"{where}.shape", _rank_text(wanted.shape), _rank_text(spec.shape))
            continue
        offered = tuple(_resolve(dim, bindings) for dim in spec.shape)
        yield from _dims("output_shape", where, wanted.shape, offered)


def _dims(
    code: IncompatibilityCode, where: str, required: tuple[int | str, ...], offered: tuple[tuple[int | str, str], ...]
) -> Iterator[Incompatibility]:
    """A fixed required dimension needs the same fixed size; a symbolic one takes any."""
    for index, (need, (have, have_text)) in enumerate(zip(required, offered, strict=True)):
        if isinstance(need, int) and have != need:
            yield Incompatibility(code, f"{where}.shape[{index}]", str(need), have_text)


def _bindings(declared: tuple[TensorSpec, ...], fed: tuple[TensorSpec, ...]) -> dict[str, int]:
    """Named symbolic input dimensions the application always feeds with one fixed size."""
    seen: dict[str, set[int | str]] = {}
    by_name = {t.name: t for t in fed}
    for spec in declared:
        sent = by_name.get(spec.name)
        if sent is None or len(sent.shape) != len(spec.shape):
            continue
        for dim, size in zip(spec.shape, sent.shape, strict=True):
            if isinstance(dim, str) and dim != "?":
                seen.setdefault(dim, set()).add(size)
    return {
        symbol: size for symbol, sizes in seen.items() if len(sizes) == 1 and isinstance(size := next(iter(sizes)), int)
    }


def _resolve(dim: int | str, bindings: Mapping[str, int]) -> tuple[int | str, str]:
    """An output dimension as the model will produce it, with a text that says why."""
    if isinstance(dim, str) and dim in bindings:
        return bindings[dim], f"{bindings[dim]} ({dim}, fixed by the inputs)"
    return dim, _dim_text(dim)


def _dim_text(dim: int | str) -> str:
    """Show a fixed size as is and a symbolic one as any size."""
    return str(dim) if isinstance(dim, int) else f"{dim} (any size)"


def _rank_text(shape: tuple[int | str, ...]) -> str:
    """Show a shape with its rank, for rank mismatches."""
    return f"rank {len(shape)} [{', '.join(str(d) for d in shape)}]"


def _preprocessing(declared: Preprocessing | None, applied: PreprocessingRef | None) -> Iterator[Incompatibility]:
    """Both sides must name the same preprocessing id and version, or none at all."""
    where = "contract.preprocessing"
    if declared is None:
        if applied is not None:
            applies = f"{applied.id} v{applied.version} (the bundle declares none)"
            yield Incompatibility("preprocessing_missing", where, "no preprocessing", applies)
        return
    if applied is None:
        needs = f"{declared.id} v{declared.version}"
        yield Incompatibility("preprocessing_missing", where, needs, "none (the application declares none)")
    elif applied.id != declared.id:
        yield Incompatibility("preprocessing_id", f"{where}.id", declared.id, applied.id)
    elif applied.version != declared.version:
        yield Incompatibility("preprocessing_version", f"{where}.version", str(declared.version), str(applied.version))


# ---------------------------------------------------------------- device


def _quantization(contract: Contract, device: DeviceProfile) -> Iterator[Incompatibility]:
    """The device must be able to execute the bundle's quantization scheme."""
    scheme = contract.quantization.scheme
    if scheme not in device.quantization:
        executes = ", ".join(device.quantization) or "nothing"
        yield Incompatibility("quantization", "contract.quantization.scheme", scheme, f"device executes {executes}")


def _runtime(required: RuntimeRequirement, runtimes: Mapping[str, str]) -> Iterator[Incompatibility]:
    """The runtime must be installed (names compared as PEP 503) in a version the specifier allows."""
    wanted = f"{required.name}{required.specifier or ' (any version)'}"
    installed = {canonicalize_name(name): version for name, version in runtimes.items()}
    version = installed.get(canonicalize_name(required.name))
    if version is None:
        others = ", ".join(f"{name} {v}" for name, v in sorted(runtimes.items())) or "none"
        yield Incompatibility(
            "runtime_missing", "contract.runtime.name", wanted, f"not installed (installed: {others})"
        )
        return
    try:
        parsed = Version(version)
    except InvalidVersion:
        yield Incompatibility(
            "runtime_version", "contract.runtime.specifier", wanted, f"{version!r}, not a PEP 440 version"
        )
        return
    # An installed pre-release is a fact, not a candidate to avoid, as in `pip check`.
    if not SpecifierSet(required.specifier).contains(parsed, prereleases=True):
        yield Incompatibility("runtime_version", "contract.runtime.specifier", wanted, f"{required.name} {version}")


def _hardware(targets: HardwareTargets, payload_bytes: int, device: DeviceProfile) -> Iterator[Incompatibility]:
    """Architecture, device type, tags, RAM, disk and accelerator, in that order."""
    yield from _arch(targets.arch, device.arch)
    yield from _device_type(targets.device_types, device.device_type)
    yield from _tags(targets.required_tags, device.tags)
    if device.ram_bytes < targets.min_ram_bytes:
        need = f">= {_size(targets.min_ram_bytes)}"
        yield Incompatibility("ram", "contract.hardware.min_ram_bytes", need, _size(device.ram_bytes))
    yield from _disk(targets.min_disk_bytes, payload_bytes, device.disk_free_bytes)
    if targets.accelerator is not None and targets.accelerator not in device.accelerators:
        has = ", ".join(device.accelerators) or "none"
        yield Incompatibility("accelerator", "contract.hardware.accelerator", targets.accelerator, has)


def _arch(allowed: tuple[str, ...], arch: str) -> Iterator[Incompatibility]:
    """The device architecture must be listed (aliases such as ``arm64`` folded); empty means any."""
    if allowed and _normal_arch(arch) not in {_normal_arch(a) for a in allowed}:
        yield Incompatibility("arch", "contract.hardware.arch", " or ".join(allowed), arch)


def _normal_arch(arch: str) -> str:
    """Fold the spellings of one instruction set (``AMD64``, ``arm64``) to the Linux name."""
    lowered = arch.lower()
    return _ARCH_ALIASES.get(lowered, lowered)


def _device_type(allowed: tuple[str, ...], device_type: str | None) -> Iterator[Incompatibility]:
    """The device type must be listed; empty means any, and an unknown type fits no list."""
    if allowed and device_type not in allowed:
        has = device_type if device_type is not None else "none declared"
        yield Incompatibility("device_type", "contract.hardware.device_types", " or ".join(allowed), has)


def _tags(required: Mapping[str, str], tags: Mapping[str, str]) -> Iterator[Incompatibility]:
    """Every required tag must be present with the same value; one reason per tag."""
    for name in sorted(required):
        if tags.get(name) != required[name]:
            has = tags.get(name, "missing")
            yield Incompatibility("tag", f"contract.hardware.required_tags[{name}]", required[name], has)


def _disk(min_disk_bytes: int, payload_bytes: int, free: int) -> Iterator[Incompatibility]:
    """The free disk must hold the bundle's payload and the declared minimum."""
    if free < max(min_disk_bytes, payload_bytes):
        if min_disk_bytes >= payload_bytes:
            where, need = "contract.hardware.min_disk_bytes", f">= {_size(min_disk_bytes)}"
        else:
            where, need = "files", f">= {_size(payload_bytes)} (the payload)"
        yield Incompatibility("disk", where, need, f"{_size(free)} free")


def _size(n: int) -> str:
    """Show a byte count exactly, with a binary-unit reading when it helps."""
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n} bytes ({n / scale:.1f} {unit})"
    return "1 byte" if n == 1 else f"{n} bytes"


def _one_line(text: str) -> str:
    """Escape control characters so device-supplied text cannot break a line or a log."""
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)

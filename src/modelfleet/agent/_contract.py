"""The manifest's contract applied at run time: what the application may feed, and how to read the answer.

Inputs are checked before any inference, so a wrong name, dtype or shape is a
clear error naming the input, never a model quietly scoring the wrong tensor.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence

import numpy as np

from modelfleet.agent._runtime import Array
from modelfleet.agent._scores import ScoreReader
from modelfleet.bundle import FeatureHistogram, Head, Manifest, TensorSpec
from modelfleet.errors import IncompatibleError, ManifestError
from modelfleet.telemetry import SummaryLayout

__all__ = ["check_inputs", "check_same_contract", "layout_of", "score_reader"]

_STRING_KINDS = frozenset({"U", "O"})


def layout_of(manifest: Manifest) -> SummaryLayout:
    """The bins a version's summaries count on: its signed references, in the order features are computed.

    Raises:
        ManifestError: ``references`` when the reference features are not every feature of every
            input, input by input in contract order (as the builder writes them).
    """
    references = manifest.evidence.references
    return SummaryLayout(
        feature_edges=tuple(feature.edges for feature in references.features),
        confidence_edges=references.confidence.edges,
        n_classes=manifest.contract.head.n_classes,
        input_features=_features_per_input(manifest.contract.inputs, references.features),
    )


def _features_per_input(
    specs: Sequence[TensorSpec], features: Sequence[FeatureHistogram]
) -> tuple[tuple[str, int], ...]:
    counts = {spec.name: sum(1 for feature in features if feature.input == spec.name) for spec in specs}
    expected = [(spec.name, index) for spec in specs for index in range(counts[spec.name])]
    found = [(feature.input, feature.index) for feature in features]
    fixed = {spec.name: _fixed_feature_count(spec) for spec in specs}
    if found != expected or any(fixed[name] not in {None, count} for name, count in counts.items()):
        msg = "evidence.references.features must cover every feature (axis 1) of every input, in contract order"
        raise ManifestError(msg, code="references")
    return tuple(counts.items())


def _fixed_feature_count(spec: TensorSpec) -> int | None:
    """How many features the contract fixes for an input; ``None`` when axis 1 is symbolic."""
    if len(spec.shape) == 1:
        return 1
    dim = spec.shape[1] if len(spec.shape) > 1 else None
    return dim if isinstance(dim, int) else None


def check_same_contract(active: Manifest, other: Manifest, role: str) -> None:
    """Refuse a second version that cannot take the same inputs or answer with the same classes.

    Raises:
        IncompatibleError: ``contract_mismatch`` naming what differs.
    """
    ours, theirs = active.contract, other.contract
    differences = {
        "model name": (active.name, other.name),
        "inputs": (ours.inputs, theirs.inputs),
        "class count": (ours.head.n_classes, theirs.head.n_classes),
        "labels": (ours.labels, theirs.labels),
    }
    for what, (mine, its) in differences.items():
        if mine != its:
            msg = f"{role} version {other.version} differs from {active.version} in its {what}: {its!r} vs {mine!r}"
            raise IncompatibleError(msg, code="contract_mismatch")


def check_inputs(
    specs: Sequence[TensorSpec], layout: SummaryLayout, inputs: Mapping[str, Array] | Array
) -> tuple[dict[str, Array], int]:
    """Return the inputs by name and their row count, or refuse them before inference.

    A bare array is accepted for a single-input model.

    Raises:
        TypeError: an input is not a numpy array.
        ValueError: a missing or unexpected name, a wrong dtype, rank or dimension (the message names the
            input, the contract and what was given).
    """
    feeds = _by_name(specs, inputs)
    sizes: dict[str, int] = {}
    features = dict(layout.input_features)
    for spec in specs:
        _check_one(spec, feeds[spec.name], sizes, features.get(spec.name))
    rows = {name: int(array.shape[0]) for name, array in feeds.items()}
    if len(set(rows.values())) != 1 or 0 in rows.values():
        msg = f"every input needs the same number of rows (at least one), got {rows}"
        raise ValueError(msg)
    return feeds, next(iter(rows.values()))


def _by_name(specs: Sequence[TensorSpec], inputs: Mapping[str, Array] | Array) -> dict[str, Array]:
    names = [spec.name for spec in specs]
    if isinstance(inputs, np.ndarray):
        if len(names) != 1:
            msg = f"the model has {len(names)} inputs {names}; pass a mapping of name to array"
            raise ValueError(msg)
        return {names[0]: inputs}
    if sorted(inputs) != sorted(names):
        missing, unexpected = sorted(set(names) - set(inputs)), sorted(set(inputs) - set(names))
        msg = f"inputs must be exactly {names}; missing {missing}, unexpected {unexpected}"
        raise ValueError(msg)
    return {name: inputs[name] for name in names}


def _check_one(spec: TensorSpec, array: object, sizes: dict[str, int], features: int | None) -> None:
    """Check one input's type, dtype and shape; symbolic dims must agree across inputs.

    This runs on every inference, so the description of a wrong input is only built when one is refused.
    """
    if not isinstance(array, np.ndarray):
        msg = f"input {spec.name!r} must be a numpy array, got {type(array).__name__}"
        raise TypeError(msg)
    if not _dtype_matches(spec.dtype, array.dtype):
        msg = f"input {spec.describe()}: wrong dtype, got {_described(array)}"
        raise ValueError(msg)
    shape = spec.shape
    if array.ndim != len(shape):
        msg = f"input {spec.describe()}: wrong rank, got {_described(array)}"
        raise ValueError(msg)
    for axis, (dim, size) in enumerate(zip(shape, array.shape, strict=True)):
        expected = _expected_size(dim, size, sizes)
        if size != expected:
            msg = f"input {spec.describe()}: axis {axis} must be {expected}, got {_described(array)}"
            raise ValueError(msg)
        if axis == 1 and features is not None and size != features:
            msg = (
                f"input {spec.describe()}: axis 1 must be {features}, the features the bundle references, "
                f"got {_described(array)}"
            )
            raise ValueError(msg)


def _described(array: Array) -> str:
    """``float32[1, 64]``: how a refusal names what it was given."""
    return f"{array.dtype}[{', '.join(str(d) for d in array.shape)}]"


def _expected_size(dim: int | str, size: int, sizes: dict[str, int]) -> int:
    """A fixed dim's size; a named dim's size where it first appeared; anything for ``?``."""
    if isinstance(dim, int):
        return dim
    return size if dim == "?" else sizes.setdefault(dim, size)


def _dtype_matches(declared: str, actual: np.dtype[np.generic]) -> bool:
    if declared == "string":
        return actual.kind in _STRING_KINDS
    return declared != "bfloat16" and actual == _dtype(declared)


@functools.cache
def _dtype(name: str) -> np.dtype[np.generic]:
    return np.dtype(name)


def score_reader(head: Head) -> ScoreReader:
    """How to read the answer of a model with this head (top-1 class and confidence), in or out of process."""
    return ScoreReader(output=head.scores_output, n_classes=head.n_classes, logits=head.scores == "logits")

"""Read a model's outputs as a classifier: which output holds the scores, and what they say per row.

One pass over the validation set keeps only a few numbers per row (top-1 class,
both readings of the confidence), so memory does not grow with the class count.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from modelfleet.bundle._inference import Array, Session, batches
from modelfleet.bundle._manifest import TensorSpec
from modelfleet.errors import BuildError

__all__ = ["HeadOutputs", "ScoreKind", "Scores", "choose_head", "score_rows"]

ScoreKind = Literal["probabilities", "logits"]
_FLOATS = frozenset({"float16", "float32", "float64", "bfloat16"})
_PROBABILITY_SUM_ATOL = 1e-3  # float32 softmax rows sum to 1 within ~1e-6; logits almost never do
_PROBABILITY_RANGE_ATOL = 1e-6


@dataclass(frozen=True, slots=True)
class HeadOutputs:
    """The output holding class scores, and an int64 label output if the model has one."""

    scores: TensorSpec
    label: TensorSpec | None


def choose_head(outputs: Sequence[TensorSpec], requested: str | None) -> HeadOutputs:
    """Find the scores output (a float ``[N, C]`` tensor), by name if ``requested``.

    Raises:
        BuildError: ``scores_output`` when the requested output is missing or not
            ``[N, C]`` float, or when none or several outputs qualify.
    """
    return HeadOutputs(scores=_scores_output(outputs, requested), label=_label_output(outputs))


def _is_scores(spec: TensorSpec) -> bool:
    return spec.dtype in _FLOATS and len(spec.shape) == 2  # noqa: PLR2004 - [N, C]


def _scores_output(outputs: Sequence[TensorSpec], requested: str | None) -> TensorSpec:
    described = ", ".join(spec.describe() for spec in outputs)
    if requested is not None:
        match = [spec for spec in outputs if spec.name == requested]
        if not match or not _is_scores(match[0]):
            msg = f"scores output {requested!r} must be a float [N, C] output; the model has {described}"
            raise BuildError(msg, code="scores_output")
        return match[0]
    candidates = [spec for spec in outputs if _is_scores(spec)]
    if len(candidates) != 1:
        problem = "no output looks like" if not candidates else "several outputs could be"
        msg = f"{problem} class scores (a float [N, C] tensor): {described}; name one with scores_output"
        raise BuildError(msg, code="scores_output")
    return candidates[0]


def _label_output(outputs: Sequence[TensorSpec]) -> TensorSpec | None:
    labels = [spec for spec in outputs if spec.dtype == "int64" and len(spec.shape) == 1]
    if len(labels) == 1:
        return labels[0]
    return next((spec for spec in labels if spec.name == "label"), None)


@dataclass(frozen=True, slots=True)
class Scores:
    """Per-row summary of a model's scores over the validation set.

    Attributes:
        top1: the arg-max class per row.
        max_score: the largest raw score per row.
        max_softmax: the largest softmax probability per row (the confidence if the scores are logits).
        all_probabilities: every row was in [0, 1] and summed to 1.
        n_classes: the number of score columns.
    """

    top1: npt.NDArray[np.int64]
    max_score: npt.NDArray[np.float64]
    max_softmax: npt.NDArray[np.float64]
    all_probabilities: bool
    n_classes: int

    @property
    def kind(self) -> ScoreKind:
        """How the scores read: probabilities if every row looked like a distribution."""
        return "probabilities" if self.all_probabilities else "logits"

    def confidence(self, kind: ScoreKind) -> npt.NDArray[np.float64]:
        """Top-1 probability per row, reading the scores as ``kind``."""
        if kind == "logits":
            return self.max_softmax
        return np.clip(self.max_score, 0.0, 1.0)  # INT8 probabilities may overshoot 1 by a quantum


def score_rows(
    session: Session,
    inputs: Mapping[str, Array],
    scores_output: str,
    rows: int,
    progress: Callable[[int, int], None],
) -> Scores:
    """Run ``session`` over all validation rows in batches of ``rows`` and summarize the scores.

    Raises:
        BuildError: ``scores_output`` (fewer than 2 columns, or the count changes
            between batches) or ``non_finite_output``.
    """
    total = len(next(iter(inputs.values())))
    parts: list[tuple[Array, ...]] = []
    n_classes = done = 0
    for feeds in batches(inputs, rows):
        scores = np.asarray(session.run(feeds, [scores_output])[scores_output], dtype=np.float64)
        n_classes = _columns(scores, n_classes, done, session.what)
        parts.append(_summarize(scores, done, session.what))
        done += len(scores)
        progress(done, total)
    top1, max_score, max_softmax, is_probability = (np.concatenate(column) for column in zip(*parts, strict=True))
    return Scores(
        top1=top1.astype(np.int64),
        max_score=max_score,
        max_softmax=max_softmax,
        all_probabilities=bool(is_probability.all()),
        n_classes=n_classes,
    )


def _columns(scores: Array, expected: int, first_row: int, what: str) -> int:
    """Return the class count of a ``[rows, C]`` batch; ``expected`` 0 means not known yet."""
    columns = int(scores.shape[1]) if scores.ndim == 2 else 0  # noqa: PLR2004 - [N, C]
    if columns < 2 or expected not in (0, columns):  # noqa: PLR2004 - a classifier has two classes or more
        shape = list(scores.shape)
        msg = (
            f"{what} returned scores of shape {shape} at row {first_row}; a classifier needs [N, C] with a fixed C >= 2"
        )
        raise BuildError(msg, code="scores_output")
    return columns


def _summarize(scores: Array, first_row: int, what: str) -> tuple[Array, ...]:
    """Reduce one batch to (top-1, max score, max softmax, looks-like-probabilities) per row."""
    finite = np.isfinite(scores).all(axis=1)
    if not finite.all():
        msg = f"{what} returned NaN or infinite scores for validation row {first_row + int(np.argmin(finite))}"
        raise BuildError(msg, code="non_finite_output")
    top = scores.max(axis=1)
    max_softmax = 1.0 / np.exp(scores - top[:, None]).sum(axis=1)
    in_range = ((scores >= -_PROBABILITY_RANGE_ATOL) & (scores <= 1 + _PROBABILITY_RANGE_ATOL)).all(axis=1)
    sums_to_one = np.abs(scores.sum(axis=1) - 1.0) <= _PROBABILITY_SUM_ATOL
    return scores.argmax(axis=1), top, max_softmax, in_range & sums_to_one

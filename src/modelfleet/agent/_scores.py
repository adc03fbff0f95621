"""Reading a classifier's answer (top-1 class and confidence) from its outputs, wherever the model ran.

:class:`ScoreReader` is the manifest's head in plain values, so it travels to a
worker process, which reads a one-row answer as two plain numbers right after
its inference (:meth:`ScoreReader.row`): they cost far less to send back than
arrays, and the caller, waking up cold, skips reading the scores. It imports
only numpy: a worker process never loads the manifest schema.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

__all__ = ["ScoreReader", "Scores"]

Array = npt.NDArray[Any]
_INT64, _FLOAT64 = np.dtype(np.int64), np.dtype(np.float64)  # dtype objects: a type costs 3 us more per array cold


class Scores(NamedTuple):
    """A classifier's answer per row: top-1 class and its confidence in [0, 1] (made on every call: a tuple).

    ``row`` repeats a one-row answer as plain ``(confidence, class)`` numbers, for the summarizer's one-row
    call; ``None`` for a batch.
    """

    top1: npt.NDArray[np.int64]
    confidence: npt.NDArray[np.float64]
    row: tuple[float, int] | None = None


@dataclass(frozen=True, slots=True)
class ScoreReader:
    """Reads top-1 class and confidence from the scores output, as the bundle builder read them.

    Attributes:
        output: the name of the scores output.
        n_classes: the classes it scores.
        logits: the scores are logits (softmax taken), not probabilities (clipped to [0, 1]).
    """

    output: str
    n_classes: int
    logits: bool

    def __call__(self, outputs: Mapping[str, Array], rows: int) -> Scores:
        """The answer to ``rows`` rows.

        Raises:
            ValueError: the scores output is missing, has the wrong shape, or holds NaN or infinity.
        """
        raw = self._raw(outputs, rows)
        if rows == 1 and not self.logits:
            return self.scores_of(self._plain(raw))
        scores = raw.astype(np.float64)
        if not np.isfinite(scores).all():
            raise ValueError(self._not_finite())
        return Scores(top1=scores.argmax(axis=1).astype(np.int64), confidence=self._confidence(scores))

    def row(self, outputs: Mapping[str, Array], rows: int) -> tuple[float, int] | None:
        """A one-row answer of probabilities as plain ``(confidence, class)``; ``None`` for others (read whole).

        Raises:
            ValueError: as :meth:`__call__` does.
        """
        if rows != 1 or self.logits:
            return None
        return self._plain(self._raw(outputs, rows))

    @staticmethod
    def scores_of(row: tuple[float, int]) -> Scores:
        """The scores of a one-row answer read as plain numbers."""
        confidence, predicted = row
        return Scores(np.array([predicted], _INT64), np.array([confidence], _FLOAT64), row)

    def _raw(self, outputs: Mapping[str, Array], rows: int) -> Array:
        """The scores output, of the shape ``rows`` rows call for."""
        raw = outputs.get(self.output)
        if raw is None or raw.shape != (rows, self.n_classes):
            shape = None if raw is None else list(raw.shape)
            msg = f"scores output {self.output!r} must be [{rows}, {self.n_classes}], got {shape}"
            raise ValueError(msg)
        return raw

    def _plain(self, raw: Array) -> tuple[float, int]:
        """One row of probabilities in plain Python numbers: the same answer as the batch path, fewer numpy calls.

        A device mostly answers one row at a time, right after an inference has evicted the caches, where
        every numpy call costs microseconds.
        """
        values = raw.tolist()[0]  # Python floats (ints for an integer output); no view of the row made
        if not all(map(math.isfinite, values)):
            raise ValueError(self._not_finite())
        top = max(values)  # the first of equal maxima, as argmax picks
        return min(max(float(top), 0.0), 1.0), values.index(top)

    def _confidence(self, scores: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        """Top-1 probability per row: the largest softmax of logits, or the largest probability clipped to [0, 1]."""
        top = scores.max(axis=1)
        if self.logits:
            return np.asarray(1.0 / np.exp(scores - top[:, None]).sum(axis=1), dtype=np.float64)
        return np.asarray(np.clip(top, 0.0, 1.0), dtype=np.float64)  # INT8 probabilities may overshoot 1 by a quantum

    def _not_finite(self) -> str:
        return f"scores output {self.output!r} holds NaN or infinite values"

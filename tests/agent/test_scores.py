"""Reading a classifier's answer: the one-row path gives exactly what the batch path gives."""

import numpy as np
import pytest

from modelfleet.agent._contract import score_reader
from modelfleet.bundle import Head

ROWS = {
    "softmax": np.array([[0.1, 0.7, 0.2]], np.float32),
    "tie: the first maximum": np.array([[0.4, 0.4, 0.2]], np.float32),
    "int8 overshoot clipped to 1": np.array([[1.0039, 0.0, 0.0]], np.float32),
    "negative clipped to 0": np.array([[-0.5, -0.25, -0.75]], np.float64),
    "an integer output": np.array([[0, 1, 0]], np.int64),
    "half precision": np.array([[0.25, 0.5, 0.25]], np.float16),
}


def head(scores="probabilities"):
    return Head(n_classes=3, scores_output="p", scores=scores)


def batch_path(raw, kind="probabilities"):
    """The same row read as part of a batch (the other row is discarded)."""
    scores = score_reader(head(kind))({"p": np.concatenate([raw, raw])}, 2)
    return scores.top1[:1], scores.confidence[:1]


@pytest.mark.parametrize("case", list(ROWS))
def test_one_row_equals_the_batch_path(case):
    raw = ROWS[case]
    one = score_reader(head())({"p": raw}, 1)

    top1, confidence = batch_path(raw)
    assert one.top1.dtype == np.int64
    assert one.confidence.dtype == np.float64
    assert one.top1.tolist() == top1.tolist()
    assert one.confidence.tolist() == confidence.tolist()
    # the plain numbers the summarizer's one-row call takes are the same answer, as Python types
    assert one.row == (confidence.item(), top1.item())
    assert (type(one.row[0]), type(one.row[1])) == (float, int)


def test_random_rows_equal_the_batch_path():
    rng = np.random.default_rng(0)
    for _ in range(500):
        raw = rng.uniform(-0.1, 1.1, (1, 3)).astype(rng.choice([np.float32, np.float64]))
        one = score_reader(head())({"p": raw}, 1)
        top1, confidence = batch_path(raw)
        assert (one.top1.tolist(), one.confidence.tolist()) == (top1.tolist(), confidence.tolist())


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_row_holding_nan_or_infinity_is_refused(bad):
    with pytest.raises(ValueError, match="NaN or infinite"):
        score_reader(head())({"p": np.array([[0.5, bad, 0.1]], np.float32)}, 1)


@pytest.mark.parametrize("kind", ["probabilities", "logits"])
def test_a_batch_or_logits_carry_no_plain_row(kind):
    raw = ROWS["softmax"]
    assert score_reader(head(kind))({"p": np.concatenate([raw, raw])}, 2).row is None
    if kind == "logits":  # logits are read the batch way, one row too
        assert score_reader(head(kind))({"p": raw}, 1).row is None

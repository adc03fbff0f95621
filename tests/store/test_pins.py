"""Pin resolution: device pin > most specific matching selector > newest pin > newest installed release."""

from datetime import UTC, datetime, timedelta

import pytest

from modelfleet.store import PinCandidate, resolve_pins, selector_matches

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def candidate(version, *, pin_id=1, device_id=None, selector=None, minutes=0, model="m"):
    return PinCandidate(
        pin_id=pin_id, model=model, version=version, release=int(version.split(".")[1]), sha256="0" * 64, size=1,
        device_id=device_id, selector=selector, created_at=T0 + timedelta(minutes=minutes) if pin_id else None,
    )  # fmt: skip


NEWEST = candidate("1.9.0", pin_id=None)
DEVICE = candidate("1.1.0", device_id="d")
BOTH_TAGS = candidate("1.2.0", pin_id=2, selector={"a": "1", "b": "2"})
OTHER_TAGS = candidate("1.2.0", pin_id=2, selector={"a": "2", "b": "2"})
TAG_A = candidate("1.1.0", selector={"a": "1"})
TAG_A_LATER = candidate("1.1.0", selector={"a": "1"}, minutes=5)
TAG_B = candidate("1.2.0", pin_id=2, selector={"b": "2"})
EVERYONE = candidate("1.1.0", selector={})

# candidates -> the version a device tagged a=1, b=2 gets
CASES = {
    "device pin beats a more specific selector": ([DEVICE, BOTH_TAGS], "1.1.0"),
    "more tags win": ([TAG_A, BOTH_TAGS], "1.2.0"),
    "non-matching selectors never win": ([TAG_A, OTHER_TAGS], "1.1.0"),
    "ties go to the newest pin": ([TAG_A_LATER, TAG_B], "1.1.0"),
    "the empty selector matches everyone": ([EVERYONE], "1.1.0"),
    "any pin beats the newest release": ([NEWEST, EVERYONE], "1.1.0"),
    "the newest release when nothing is pinned": ([NEWEST], "1.9.0"),
    "nothing at all": ([], None),
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_resolution(case):
    candidates, expected = CASES[case]
    for ordering in (candidates, list(reversed(candidates))):
        chosen = resolve_pins(ordering, {"a": "1", "b": "2"})
        assert [c.version for c in chosen] == ([expected] if expected else [])


def test_one_answer_per_model_sorted_by_model():
    chosen = resolve_pins([candidate("1.1.0", model="z", selector={}), candidate("1.2.0", model="a", selector={})], {})
    assert [(c.model, c.version) for c in chosen] == [("a", "1.2.0"), ("z", "1.1.0")]


@pytest.mark.parametrize(
    ("selector", "tags", "matches"),
    [
        ({}, {}, True),
        ({"a": "1"}, {"a": "1", "b": "2"}, True),
        ({"a": "1"}, {"a": "2"}, False),
        ({"a": "1"}, {}, False),
    ],
)
def test_selector_matching(selector, tags, matches):
    assert selector_matches(selector, tags) is matches

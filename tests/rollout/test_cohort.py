"""Sticky hashed cohorts: shares, stickiness across stages, lab devices."""

import itertools

import pytest

from modelfleet.rollout import BUCKETS, Cohort, assign, bucket, treated_share

DEVICES = [f"dev-{i:05d}" for i in range(20_000)]


def cohorts(percent, holdout=10, salt="s1"):
    return {d: assign(salt, d, {}, holdout_percent=holdout, percent=percent) for d in DEVICES}


def share(assignment, cohort):
    return sum(1 for c in assignment.values() if c is cohort) / len(assignment)


def test_buckets_are_stable_and_in_range():
    assert bucket("s", "dev-1") == bucket("s", "dev-1")
    assert all(0 <= bucket("s", d) < BUCKETS for d in DEVICES[:1000])
    assert bucket("s", "dev-1") != bucket("t", "dev-1") or bucket("s", "dev-2") != bucket("t", "dev-2")


@pytest.mark.parametrize(("holdout", "percent"), [(10, 5), (20, 50), (10, 100)])
def test_shares_match_the_spec_within_sampling_error(holdout, percent):
    assignment = cohorts(percent, holdout)
    expected_treated = (1 - holdout / 100) * percent / 100
    assert share(assignment, Cohort.HOLDOUT) == pytest.approx(holdout / 100, abs=0.015)
    assert share(assignment, Cohort.TREATED) == pytest.approx(expected_treated, abs=0.015)


def test_a_treated_device_stays_treated_as_stages_widen_and_holdout_never_moves():
    stages = [cohorts(p) for p in (5, 25, 50, 100)]
    for earlier, later in itertools.pairwise(stages):
        assert all(later[d] is Cohort.TREATED for d, c in earlier.items() if c is Cohort.TREATED)
        assert {d for d, c in earlier.items() if c is Cohort.HOLDOUT} == {
            d for d, c in later.items() if c is Cohort.HOLDOUT
        }
    assert share(stages[-1], Cohort.WAITING) == 0


def test_different_rollouts_draw_different_holdouts():
    first = {d for d, c in cohorts(50, salt="a").items() if c is Cohort.HOLDOUT}
    second = {d for d, c in cohorts(50, salt="b").items() if c is Cohort.HOLDOUT}
    overlap = len(first & second) / len(first)
    assert overlap == pytest.approx(0.1, abs=0.03)  # independent draws overlap by about the holdout share


def test_lab_devices_are_never_compared():
    assert assign("s", "dev-1", {"lab": "true"}, holdout_percent=10, percent=0) is Cohort.LAB
    assert assign("s", "dev-1", {"lab": "no"}, holdout_percent=10, percent=100) is not Cohort.LAB


def test_treated_share_among_compared_devices():
    assert treated_share(20, 50) == pytest.approx(0.4 / 0.6)
    assert treated_share(10, 100) == pytest.approx(0.9)

"""The rollout simulator: reproducible from its seed, device values with the stated spread, decisions coded."""

import numpy as np
import pytest

from modelfleet.stats import (
    CONTINUE,
    PROMOTE,
    ROLLBACK,
    RolloutScenario,
    simulate_device_values,
    simulate_rollouts,
)

SCENARIO = RolloutScenario(devices=400, treatment_probability=0.7, delta=0.0, device_sd=1.0, inference_sd=3.0)


def run(seed, scenario=SCENARIO, **changes):
    kwargs = {"runs": 300, "margin": 0.5, "direction": "higher_is_better", "planned_devices": 400} | changes
    return simulate_rollouts(np.random.default_rng(seed), scenario, **kwargs)


def test_the_same_seed_gives_the_same_rollouts():
    a, b = run(7, batch_runs=100), run(7, batch_runs=100)
    for field in ("decision", "decision_devices", "first_rollback", "first_promote", "naive_first_rollback"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))


def test_device_values_have_the_stated_spread_and_assignment_share(rng):
    values, treated = simulate_device_values(rng, SCENARIO, 200)
    assert values.shape == treated.shape == (200, 400)
    assert treated.mean() == pytest.approx(0.7, abs=0.01)
    assert values.std() == pytest.approx(SCENARIO.device_value_sd(), rel=0.02)


def test_binomial_devices_report_error_rates(rng):
    scenario = RolloutScenario(devices=300, treatment_probability=0.5, delta=0.0, metric="binomial", baseline=0.1)
    values, _ = simulate_device_values(rng, scenario, 50)
    assert values.min() >= 0.0
    assert values.max() <= 1.0
    assert values.mean() == pytest.approx(0.12, abs=0.02)  # logit-normal effects lift the mean above 0.1


def test_decisions_are_coded_and_consistent_with_the_first_looks():
    result = run(3, RolloutScenario(devices=400, treatment_probability=0.5, delta=-2.0))
    assert set(np.unique(result.decision)) <= {CONTINUE, ROLLBACK, PROMOTE}
    assert result.rate("rollback") > 0.95
    rolled = result.decision == ROLLBACK
    np.testing.assert_array_equal(result.decision_devices[rolled], result.first_rollback[rolled])
    assert result.rate("rollback", by_devices=60) < result.rate("rollback")


def test_looking_less_often_never_decides_earlier():
    every = run(5, RolloutScenario(devices=400, treatment_probability=0.5, delta=-0.5))
    sparse = run(5, RolloutScenario(devices=400, treatment_probability=0.5, delta=-0.5), look_every=50)
    decided = sparse.decision_devices > 0
    assert np.all(sparse.decision_devices[decided] % 50 == 0)
    assert np.all(sparse.decision_devices[decided] >= every.decision_devices[decided])

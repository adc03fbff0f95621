"""The one-sided normal-mixture boundary: it solves its defining equation and a random walk rarely crosses it."""

import math

import numpy as np
import pytest

from modelfleet.stats._boundary import (
    mixture_rho,
    one_sided_boundary,
    one_sided_log_mixture,
    standardized_boundary_constant,
    two_sided_log_mixture,
)

TIMES = np.array([0.0, 1.0, 10.0, 100.0, 1_000.0, 100_000.0])


@pytest.mark.parametrize("alpha", [0.001, 0.01, 0.05, 0.2])
def test_the_boundary_is_where_the_mixture_reaches_one_over_alpha(alpha):
    rho = mixture_rho(500.0, alpha)
    u = one_sided_boundary(TIMES, alpha, rho)
    np.testing.assert_allclose(one_sided_log_mixture(u, TIMES, rho), math.log(1 / alpha), atol=1e-9)


def test_the_boundary_grows_with_time_and_with_confidence():
    rho = mixture_rho(500.0, 0.05)
    u = one_sided_boundary(TIMES, 0.05, rho)
    assert np.all(np.diff(u) > 0)
    assert np.all(one_sided_boundary(TIMES, 0.01, rho) > u)


def test_the_one_sided_mixture_is_tighter_than_the_two_sided_one_at_the_same_alpha():
    rho = mixture_rho(500.0, 0.05)
    u = one_sided_boundary(TIMES, 0.05, rho)
    assert np.all(two_sided_log_mixture(u, TIMES, rho) < math.log(1 / 0.05))


def test_the_planned_size_constant_is_the_boundary_in_standard_errors_and_exceeds_z():
    for alpha, z in ((0.05, 1.6449), (0.01, 2.3263)):
        m = 2_000.0
        b = standardized_boundary_constant(alpha)
        assert one_sided_boundary([m], alpha, mixture_rho(m, alpha))[0] / math.sqrt(m) == pytest.approx(b)
        assert z < b < 2 * z
    assert standardized_boundary_constant(0.05) == pytest.approx(2.766, abs=1e-3)
    assert standardized_boundary_constant(0.01) == pytest.approx(3.353, abs=1e-3)


def test_a_gaussian_random_walk_crosses_the_boundary_with_probability_below_alpha(rng, upper_bound):
    alpha, runs, steps = 0.05, 4000, 2000
    walks = np.cumsum(rng.standard_normal((runs, steps)), axis=1)
    times = np.arange(1, steps + 1)
    u = one_sided_boundary(times, alpha, mixture_rho(500.0, alpha))
    crossed = np.mean(np.any(walks >= u, axis=1))
    assert crossed <= upper_bound(runs, alpha), f"crossing share {crossed:.4f}"


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0, -0.1])
def test_a_one_sided_level_outside_zero_to_one_half_is_refused(alpha):
    with pytest.raises(ValueError, match="alpha"):
        mixture_rho(100.0, alpha)

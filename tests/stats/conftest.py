"""Shared helpers for the statistics tests: seeded generators and binomial error bounds."""

import numpy as np
import pytest
from scipy import stats


@pytest.fixture
def rng():
    """A fresh, seeded generator per test, so each test is exact and order-independent."""
    return np.random.default_rng(20261123)


def binomial_upper(runs: int, rate: float, confidence: float = 0.999) -> float:
    """The share of runs a correct procedure with error ``rate`` stays under with ``confidence``."""
    return float(stats.binom.ppf(confidence, runs, rate)) / runs


@pytest.fixture
def upper_bound():
    """``upper_bound(runs, alpha)``: the 99.9% binomial upper bound on an observed error share."""
    return binomial_upper

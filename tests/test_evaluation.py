"""The interval stune prints around an eval score (``spearman_interval``) means what it says."""

import math

import numpy as np
import pytest
from scipy.stats import spearmanr

from trainers.evaluation import spearman_interval


@pytest.mark.parametrize("n_pairs", [14, 40])
def test_spearman_interval_holds_the_true_correlation_about_95_percent_of_the_time(n_pairs):
    rng = np.random.default_rng(n_pairs)
    rho = 0.6  # bivariate normal: its spearman correlation is 6/pi * asin(rho/2)
    true_spearman = 6 / math.pi * math.asin(rho / 2)
    cov = [[1, rho], [rho, 1]]
    draws, covered = 800, 0
    for _ in range(draws):
        x, y = rng.multivariate_normal([0, 0], cov, size=n_pairs).T
        low, high = spearman_interval(spearmanr(x, y).statistic, n_pairs)
        covered += low <= true_spearman <= high
    assert 0.92 <= covered / draws <= 0.98


def test_spearman_interval_narrows_with_more_pairs_and_gives_up_on_nan_or_too_few():
    widths = [high - low for low, high in (spearman_interval(0.7, n) for n in (14, 100, 400))]
    assert widths[0] > widths[1] > widths[2] > 0
    assert spearman_interval(float("nan"), 100) is None and spearman_interval(0.5, 3) is None
    low, high = spearman_interval(1.0, 50)  # a perfect score stays a finite interval below 1
    assert low < high <= 1.0

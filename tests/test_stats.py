"""The book's statistics of accuracies (lib.stats) against scipy's own."""

import math

import numpy as np
import pytest
from scipy import stats as st

from lib import stats


def test_mean_ci_is_the_t_interval():
    v = [0.901, 0.907, 0.9065, 0.903]
    s = stats.mean_ci(v)
    lo, hi = st.t.interval(0.95, len(v) - 1, loc=np.mean(v), scale=st.sem(v))
    assert s["n"] == 4 and s["sd"] == pytest.approx(np.std(v, ddof=1))
    assert (s["lo"], s["hi"]) == pytest.approx((lo, hi))
    one = stats.mean_ci([0.9])
    assert one["n"] == 1 and math.isnan(one["lo"])
    with pytest.raises(ValueError):
        stats.mean_ci([])


def test_binomial_se_and_the_difference_against_welch():
    assert stats.binomial_se(0.9, 10_000) == pytest.approx(0.003)
    a, b = np.array([0.8525, 0.8476, 0.8522]), np.array([0.8535, 0.8505, 0.8526])
    ci = st.ttest_ind(b, a, equal_var=False).confidence_interval(0.95)
    text = stats.difference(a, b, 10_000, "A", "B")
    assert f"{(b.mean() - a.mean()) * 100:+.2f} points" in text
    assert f"95 % CI {ci.low * 100:+.2f} to {ci.high * 100:+.2f}, Welch" in text
    assert "smaller than the test set's own sampling error" in text
    far = stats.difference([0.5, 0.51], [0.9, 0.91], 10_000)
    assert "sampling error" not in far
    # a difference of two accuracies: sqrt 2 times one's standard error (0.42 points at
    # 90 %), so +0.4 points is flagged though it exceeds one accuracy's 0.30
    assert stats.difference_se(0.9, 10_000) == pytest.approx(0.003 * 2 ** 0.5)
    assert "0.42 points" in stats.difference([0.898, 0.898], [0.902, 0.902], 10_000)


def test_spearman_ci_brackets_rho_and_narrows_with_more_pairs():
    rng = np.random.default_rng(0)
    x = rng.normal(size=200)
    y = x + rng.normal(size=200)
    small, big = stats.spearman_ci(x[:20], y[:20]), stats.spearman_ci(x, y)
    assert big["rho"] == pytest.approx(st.spearmanr(x, y).statistic)
    for s in (small, big):
        assert s["lo"] < s["rho"] < s["hi"]
    assert big["hi"] - big["lo"] < small["hi"] - small["lo"]
    assert math.isnan(stats.spearman_ci(x[:4], y[:4])["lo"])


def test_proportion_ci_is_wilsons():
    s = stats.proportion_ci(4, 6)
    ci = st.binomtest(4, 6).proportion_ci(method="wilson")
    assert s["p"] == pytest.approx(4 / 6) and (s["lo"], s["hi"]) == pytest.approx(
        (ci.low, ci.high))
    assert math.isnan(stats.proportion_ci(0, 0)["p"])


def test_welch_ci_is_scipys():
    a, b = [0.8525, 0.8476, 0.8522], [0.8535, 0.8505, 0.8526]
    w = stats.welch_ci(a, b)
    ci = st.ttest_ind(b, a, equal_var=False).confidence_interval(0.95)
    assert w["d"] == pytest.approx(np.mean(b) - np.mean(a))
    assert (w["lo"], w["hi"]) == pytest.approx((ci.low, ci.high))
    assert math.isnan(stats.welch_ci([0.5], [0.6, 0.7])["lo"])


def test_paired_ci_is_scipys_ttest_rel():
    from scipy import stats as st

    a, b = [0.894, 0.897, 0.898], [0.905, 0.907, 0.908]
    w = stats.paired_ci(a, b)
    ci = st.ttest_rel(b, a).confidence_interval(0.95)
    assert w["d"] == pytest.approx(np.mean(b) - np.mean(a))
    assert (w["lo"], w["hi"]) == pytest.approx((ci.low, ci.high))
    assert "paired t" in stats.difference(a, b, 10_000, paired=True)
    with pytest.raises(ValueError, match="pairs"):
        stats.paired_ci([0.1, 0.2], [0.3])

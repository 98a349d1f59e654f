"""Accuracy over seeds, compared honestly (chapter 5 onwards).

Every comparison of accuracies in the book gives the mean, the standard deviation
and a 95 % confidence interval of the mean (Student's t over the seeds), the number
of seeds, and the test set's own sampling error: with n test images an accuracy p
has a binomial standard error sqrt(p (1 - p) / n), about 0.3 points at 90 % on
10,000 images. A difference of two such accuracies has sqrt 2 times that standard
error when the two are measured on independent draws of test images
(:func:`difference_se`); on one shared test set the two models' errors fall on many of
the same images, which makes it smaller, so the book's yardstick is the larger,
cautious one. A difference smaller than it is within what other draws of test images
could change, whatever the seeds say.
"""

from __future__ import annotations

import math
import warnings

import numpy as np


def mean_ci(values, level: float = 0.95) -> dict:
    """Mean, SD (n - 1), n and the t confidence interval of the mean of ``values``."""
    from scipy import stats

    v = np.asarray(values, dtype=float)
    if v.size == 0:
        raise ValueError("mean_ci needs at least one value")
    m = float(v.mean())
    if v.size < 2:
        return dict(mean=m, sd=float("nan"), n=1, lo=float("nan"), hi=float("nan"))
    sd = float(v.std(ddof=1))
    half = float(stats.t.ppf(0.5 + level / 2, v.size - 1)) * sd / math.sqrt(v.size)
    return dict(mean=m, sd=sd, n=int(v.size), lo=m - half, hi=m + half)


def binomial_se(p: float, n: int) -> float:
    """Standard error of an accuracy ``p`` measured on ``n`` test images."""
    return math.sqrt(p * (1 - p) / n)


def difference_se(p: float, n: int) -> float:
    """Standard error of the difference of two accuracies near ``p``, each measured on
    ``n`` independently drawn test images: sqrt 2 times :func:`binomial_se` (the book's
    yardstick for "a difference below the test set's sampling error")."""
    return math.sqrt(2) * binomial_se(p, n)


def fmt(values, level: float = 0.95) -> str:
    """"93.12 % ± 0.10 (95 % CI 92.87-93.37, n = 3)" for accuracies given as fractions."""
    s = mean_ci(values, level)
    if s["n"] < 2:
        return f"{s['mean']:.2%} (n = 1)"
    return (f"{s['mean']:.2%} ± {s['sd'] * 100:.2f} (95 % CI {s['lo'] * 100:.2f}-"
            f"{s['hi'] * 100:.2f}, n = {s['n']})")


def welch_ci(a, b, level: float = 0.95) -> dict:
    """Mean of ``b`` minus mean of ``a`` with Welch's t confidence interval
    (scipy.stats.ttest_ind with unequal variances) and its p-value; nan bounds and p with
    fewer than 2 values a side or no spread at all."""
    from scipy import stats

    a, b = np.asarray(a, float), np.asarray(b, float)
    d = float(b.mean() - a.mean())
    if len(a) < 2 or len(b) < 2 or (np.ptp(a) == 0 and np.ptp(b) == 0):
        return dict(d=d, lo=float("nan"), hi=float("nan"), p=float("nan"))
    with warnings.catch_warnings():  # scipy's precision warning on near-equal values
        warnings.simplefilter("ignore", RuntimeWarning)
        t = stats.ttest_ind(b, a, equal_var=False)
        ci = t.confidence_interval(level)
    return dict(d=d, lo=float(ci.low), hi=float(ci.high), p=float(t.pvalue))


def paired_ci(a, b, level: float = 0.95) -> dict:
    """Mean of ``b - a`` over pairs (the same runs scored two ways) with the paired t
    interval (scipy.stats.ttest_rel); nan bounds with fewer than 2 pairs or no spread."""
    from scipy import stats

    a, b = np.asarray(a, float), np.asarray(b, float)
    if a.shape != b.shape:
        raise ValueError("paired_ci needs as many values on each side, in pairs")
    d = float((b - a).mean())
    if len(a) < 2 or np.ptp(b - a) == 0:
        return dict(d=d, lo=float("nan"), hi=float("nan"), p=float("nan"))
    t = stats.ttest_rel(b, a)
    ci = t.confidence_interval(level)
    return dict(d=d, lo=float(ci.low), hi=float(ci.high), p=float(t.pvalue))


def difference(a, b, n_test: int, name_a: str = "A", name_b: str = "B",
               paired: bool = False) -> str:
    """B against A in words: the difference of the means with its 95 % CI (Welch's, or
    the paired t interval when ``paired``: the same runs scored two ways), and whether
    it is below the test set's sampling error of a difference at these accuracies
    (:func:`difference_se`)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    w = paired_ci(a, b) if paired else welch_ci(a, b)
    d = w["d"]
    se_test = difference_se(float((a.mean() + b.mean()) / 2), n_test)
    text = f"{name_b} minus {name_a}: {d * 100:+.2f} points"
    if math.isfinite(w["lo"]):
        text += (f" (95 % CI {w['lo'] * 100:+.2f} to {w['hi'] * 100:+.2f}, "
                 f"{'paired t' if paired else 'Welch'})")
    if abs(d) < se_test:
        text += (f"; the difference itself is smaller than the test set's own sampling "
                 f"error of a difference ({se_test * 100:.2f} points on {n_test:,} "
                 "images)")
    return text[0].upper() + text[1:]


def spearman_ci(x, y, level: float = 0.95) -> dict:
    """Spearman's rho of ``x`` and ``y`` (scipy.stats.spearmanr) with an approximate
    confidence interval: Fisher's z of rho with standard error 1.06 / sqrt(n - 3)
    (Fieller, Hartley and Pearson's approximation for rank correlations); nan bounds
    below 5 pairs."""
    from scipy import stats

    x, y = np.asarray(x, float), np.asarray(y, float)
    n = int(len(x))
    rho = float(stats.spearmanr(x, y).statistic) if n >= 3 else float("nan")
    return rho_interval(rho, n, level)


def rho_interval(rho: float, n: int, level: float = 0.95) -> dict:
    """The interval of :func:`spearman_ci` for a rank correlation ``rho`` over ``n``
    pairs already computed; nan bounds below 5 pairs."""
    from scipy import stats

    if n < 5 or not math.isfinite(rho):
        return dict(rho=rho, lo=float("nan"), hi=float("nan"), n=n)
    z = math.atanh(max(min(rho, 0.999999), -0.999999))
    half = float(stats.norm.ppf(0.5 + level / 2)) * 1.06 / math.sqrt(n - 3)
    return dict(rho=rho, lo=math.tanh(z - half), hi=math.tanh(z + half), n=n)


def proportion_ci(k: int, n: int, level: float = 0.95) -> dict:
    """A share ``k`` of ``n`` with Wilson's confidence interval (scipy.stats.binomtest)."""
    from scipy import stats

    if n == 0:
        return dict(p=float("nan"), lo=float("nan"), hi=float("nan"), k=0, n=0)
    ci = stats.binomtest(int(k), int(n)).proportion_ci(confidence_level=level,
                                                       method="wilson")
    return dict(p=k / n, lo=float(ci.low), hi=float(ci.high), k=int(k), n=int(n))

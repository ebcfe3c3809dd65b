"""Sweep statistics: t quantiles, mean intervals, paired differences and verdicts, checked against
scipy.stats and the statistics module (and textbook t values) on small made-up samples."""

import math
import statistics

import pytest

from janusflow.train import sweep_stats

scipy_stats = pytest.importorskip("scipy.stats")


def test_t_quantile_matches_scipy_and_the_textbook():
    assert sweep_stats.t_quantile(1) == pytest.approx(12.706, abs=5e-4)   # printed t tables, 0.975
    assert sweep_stats.t_quantile(2) == pytest.approx(4.303, abs=5e-4)
    assert sweep_stats.t_quantile(4) == pytest.approx(2.776, abs=5e-4)
    for level in (0.8, 0.9, 0.95, 0.99):
        for df in list(range(1, 41)) + [57, 120, 1000]:
            want = scipy_stats.t.ppf((1 + level) / 2, df)
            assert sweep_stats.t_quantile(df, level) == pytest.approx(want, rel=1e-9), (df, level)
    for df in (1, 2, 3, 8, 9):
        for t in (0.1, 1.0, 3.7):
            assert sweep_stats.t_two_sided_prob(t, df) == pytest.approx(2 * scipy_stats.t.cdf(t, df) - 1, abs=1e-13)
    with pytest.raises(ValueError, match="positive integer"):
        sweep_stats.t_quantile(0)


@pytest.mark.parametrize("xs", [[0.62, 0.55], [0.90, 0.83, 0.71], [0.1, 0.4, 0.35, 0.2, 0.05]])
def test_mean_interval_is_the_student_t_interval(xs):
    st = sweep_stats.mean_interval(xs)
    n = len(xs)
    assert st["n"] == n and st["mean"] == pytest.approx(statistics.mean(xs), rel=1e-12)
    assert st["sd"] == pytest.approx(statistics.stdev(xs), rel=1e-12)
    lo, hi = scipy_stats.t.interval(0.95, n - 1, loc=statistics.mean(xs), scale=statistics.stdev(xs) / math.sqrt(n))
    assert (st["lo"], st["hi"]) == (pytest.approx(lo, rel=1e-9), pytest.approx(hi, rel=1e-9))
    assert st["half"] == pytest.approx((hi - lo) / 2, rel=1e-9)


def test_by_hand_two_seeds():
    # 0.6 and 0.8: mean 0.7, sd = 0.1414..., half = 12.7062 * 0.1414 / 1.4142 = 1.27062
    st = sweep_stats.mean_interval([0.6, 0.8])
    assert st["half"] == pytest.approx(1.270620, abs=1e-6)
    one = sweep_stats.mean_interval([0.5])
    assert one == {"n": 1, "mean": 0.5, "sd": None, "half": None, "lo": None, "hi": None}
    with pytest.raises(ValueError):
        sweep_stats.mean_interval([])


def test_paired_difference_pairs_by_seed():
    member = {0: 0.50, 1: 0.40, 2: 0.45, 5: 0.9}     # seed 5 has no partner in F
    ref = {0: 0.70, 1: 0.65, 2: 0.60, 3: 0.1}
    d = sweep_stats.paired_difference(member, ref)
    diffs = [-0.20, -0.25, -0.15]
    assert d["seeds"] == [0, 1, 2] and d["n"] == 3
    assert d["mean"] == pytest.approx(statistics.mean(diffs))
    lo, hi = scipy_stats.t.interval(0.95, 2, loc=statistics.mean(diffs), scale=statistics.stdev(diffs) / math.sqrt(3))
    assert (d["lo"], d["hi"]) == (pytest.approx(lo), pytest.approx(hi))
    # the paired interval is narrower than the unpaired spread suggests: F and A move together
    assert d["hi"] < 0
    assert sweep_stats.paired_difference({7: 1.0}, ref) is None


def test_verdicts():
    below = sweep_stats.paired_difference({0: 0.50, 1: 0.40, 2: 0.45}, {0: 0.70, 1: 0.65, 2: 0.60})
    word, why = sweep_stats.verdict(below, -1)
    assert word == "reproduced" and "width" in why and "3 paired seeds" in why
    assert sweep_stats.verdict(below, +1)[0] == "not reproduced"
    mixed = sweep_stats.paired_difference({0: 0.5, 1: 0.7}, {0: 0.6, 1: 0.6})
    word, why = sweep_stats.verdict(mixed, -1)
    assert word == "not separable at this scale"
    assert f"width {mixed['hi'] - mixed['lo']:.4f}" in why
    one = sweep_stats.paired_difference({0: 0.1}, {0: 0.9})
    assert sweep_stats.verdict(one, -1) == ("not separable at this scale",
                                            "difference -0.8000 from one paired seed: no interval")
    assert sweep_stats.verdict(None, 1)[0] == "not separable at this scale"
    # one image of 64 in both seeds: a zero-width interval, not a certainty
    same = sweep_stats.paired_difference({0: 17 / 64, 1: 20 / 64}, {0: 16 / 64, 1: 19 / 64})
    assert same["lo"] == same["hi"] and same["lo"] > 0
    assert sweep_stats.verdict(same, -1) == ("not separable at this scale",
                                             "difference +0.0156 in each of 2 paired seeds: no spread to "
                                             "estimate an interval from")
    with pytest.raises(ValueError):
        sweep_stats.verdict(below, 0)

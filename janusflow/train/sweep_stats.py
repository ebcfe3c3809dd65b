"""Statistics of a seeded sweep: a member's mean over seeds with a 95% Student-t interval, its
paired difference from the reference member (F) with the same interval, and the verdict on a
direction the paper claims.

Every interval here is the two-sided Student t interval ``mean +- t_{(1+level)/2, n-1} * sd / sqrt(n)``
with the sample standard deviation (n - 1 in the denominator). It assumes the per-seed values
are independent draws from one normal distribution, which a handful of seeds cannot check; it
is the honest default for 2-5 seeds, where a normal (z) interval would be far too narrow
(t = 12.71 at n = 2, 4.30 at n = 3, against z = 1.96). A difference is *paired*: seed s of a
member is compared with seed s of F, which shares its data order, initialisation and noise
draws (``janusflow sweep --seeds``), so the seed-to-seed variation common to both cancels.
"""

from __future__ import annotations

import math
from typing import Mapping, Optional, Sequence

LEVEL = 0.95


def t_two_sided_prob(t: float, df: int) -> float:
    """P(|T| < t) for Student's t with integer ``df`` degrees of freedom: the closed forms of
    Abramowitz & Stegun 26.7.3 (odd df) and 26.7.4 (even df), exact up to rounding."""
    if df < 1 or int(df) != df:
        raise ValueError(f"degrees of freedom must be a positive integer, got {df}")
    if t <= 0:
        return 0.0
    theta = math.atan(t / math.sqrt(df))
    c2 = math.cos(theta) ** 2
    if df % 2 == 1:
        series, term = 0.0, 1.0
        if df > 1:
            series = 1.0
            for k in range(1, (df - 3) // 2 + 1):
                term *= (2 * k) / (2 * k + 1) * c2
                series += term
        return 2 / math.pi * (theta + math.sin(theta) * math.cos(theta) * series)
    series, term = 1.0, 1.0
    for k in range(1, (df - 2) // 2 + 1):
        term *= (2 * k - 1) / (2 * k) * c2
        series += term
    return math.sin(theta) * series


def t_quantile(df: int, level: float = LEVEL) -> float:
    """The t with P(|T| < t) = ``level``, e.g. 12.706 for df=1 and 4.303 for df=2 at 0.95
    (bisection on :func:`t_two_sided_prob`, to 1e-12 relative)."""
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    lo, hi = 0.0, 1.0
    while t_two_sided_prob(hi, df) < level:
        lo, hi = hi, hi * 2
    for _ in range(200):
        mid = (lo + hi) / 2
        if t_two_sided_prob(mid, df) < level:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-12 * hi:
            break
    return (lo + hi) / 2


def mean_interval(values: Sequence[float], level: float = LEVEL) -> dict:
    """``{"n", "mean", "sd", "half", "lo", "hi"}`` of ``values``; with one value there is no
    spread to estimate, so ``sd``, ``half``, ``lo`` and ``hi`` are None (never a zero width)."""
    xs = [float(v) for v in values]
    n = len(xs)
    if n == 0:
        raise ValueError("no values")
    mean = math.fsum(xs) / n
    if n < 2:
        return {"n": 1, "mean": mean, "sd": None, "half": None, "lo": None, "hi": None}
    sd = math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (n - 1))
    half = t_quantile(n - 1, level) * sd / math.sqrt(n)
    return {"n": n, "mean": mean, "sd": sd, "half": half, "lo": mean - half, "hi": mean + half}


def paired_difference(member: Mapping[int, float], reference: Mapping[int, float],
                      level: float = LEVEL) -> Optional[dict]:
    """:func:`mean_interval` of ``member[s] - reference[s]`` over the seeds both have (their
    list under ``"seeds"``); None when they share no seed."""
    seeds = sorted(set(member) & set(reference))
    if not seeds:
        return None
    out = mean_interval([member[s] - reference[s] for s in seeds], level)
    out["seeds"] = seeds
    return out


REPRODUCED = "reproduced"
NOT_REPRODUCED = "not reproduced"
NOT_SEPARABLE = "not separable at this scale"


def verdict(diff: Optional[dict], direction: int) -> tuple[str, str]:
    """Judge a paper's claim that a member's metric is above (``direction`` +1) or below (-1)
    the reference's from the paired difference ``diff`` (:func:`paired_difference`):

    - reproduced: the interval excludes 0 on the paper's side;
    - not reproduced: it excludes 0 on the other side (the opposite effect is measured);
    - not separable at this scale: it contains 0, or there is no interval (fewer than 2 paired
      seeds, or every paired difference the same number). The interval's width says how large
      an effect this study could have missed.

    Equal differences happen with shares counted on a few dozen images (steps of 1/64): two
    seeds that both differ by one image give sd 0 and a zero-width interval, which would
    declare a one-image difference certain. With no spread observed there is nothing to
    estimate an interval from, so no verdict either way.

    Returns ``(verdict, one-line explanation)``."""
    if direction not in (1, -1):
        raise ValueError(f"direction must be +1 or -1, got {direction}")
    if diff is None:
        return NOT_SEPARABLE, "no seed of the member is paired with one of the reference"
    if diff["half"] is None:
        return NOT_SEPARABLE, f"difference {diff['mean']:+.4f} from one paired seed: no interval"
    if diff["sd"] == 0:
        return NOT_SEPARABLE, (f"difference {diff['mean']:+.4f} in each of {diff['n']} paired seeds: "
                               "no spread to estimate an interval from")
    where = (f"difference {diff['mean']:+.4f}, {LEVEL:.0%} interval [{diff['lo']:+.4f}, {diff['hi']:+.4f}] "
             f"(width {diff['hi'] - diff['lo']:.4f}, {diff['n']} paired seeds)")
    if diff["lo"] > 0 or diff["hi"] < 0:
        same = (diff["lo"] > 0) == (direction > 0)
        return (REPRODUCED if same else NOT_REPRODUCED), where
    return NOT_SEPARABLE, where

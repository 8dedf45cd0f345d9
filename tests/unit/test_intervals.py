"""Bootstrap intervals (eval/intervals.py): coverage of a known mean, pairing, determinism."""

from __future__ import annotations

import numpy as np

from robustedit.eval.intervals import bootstrap_mean, paired_difference, per_case


def test_the_interval_holds_the_mean_and_shrinks_with_more_cases():
    rng = np.random.default_rng(1)
    small = bootstrap_mean(rng.binomial(1, 0.7, 30))
    large = bootstrap_mean(rng.binomial(1, 0.7, 3000))
    assert small.low <= small.mean <= small.high and small.n == 30
    assert large.low < 0.7 < large.high
    assert (large.high - large.low) < (small.high - small.low) / 5
    assert bootstrap_mean([]) is None
    assert bootstrap_mean([1.0, 0.0, 1.0]) == bootstrap_mean([1.0, 0.0, 1.0])  # seeded


def test_the_95_percent_interval_covers_the_true_mean_about_95_percent_of_the_time():
    rng = np.random.default_rng(2)
    covered = 0
    for i in range(200):
        iv = bootstrap_mean(rng.binomial(1, 0.3, 80), resamples=2000, seed=i)
        covered += iv.low <= 0.3 <= iv.high
    assert 0.88 <= covered / 200 <= 0.99


def test_pairing_resolves_a_difference_that_unpaired_intervals_do_not():
    rng = np.random.default_rng(3)
    base = rng.normal(0.5, 0.3, 40)  # cases differ a lot from one another...
    a = {str(i): v for i, v in enumerate(base)}
    b = {str(i): v - 0.05 + rng.normal(0, 0.01) for i, v in enumerate(base)}  # ...but B is always ~0.05 lower
    d = paired_difference(a, b)
    assert d.excludes_zero() and abs(d.mean - 0.05) < 0.01 and d.n == 40
    ia, ib = bootstrap_mean(a.values()), bootstrap_mean(b.values())
    assert ia.low < ib.high  # the unpaired intervals overlap
    assert paired_difference(a, {"0": 0.0, "x": 1.0}).n == 1  # only shared cases are paired


def test_per_case_reads_records_and_skips_missing_values():
    records = [{"case_id": 1, "metrics": {"m": 1.0}}, {"case_id": "2", "metrics": {"m": None}},
               {"case_id": 3, "metrics": {}}]
    assert per_case(records, "m") == {"1": 1.0}
    iv = bootstrap_mean([0.5, 0.7])
    assert iv.format() == f"{iv.mean * 100:.1f} [{iv.low * 100:.1f}, {iv.high * 100:.1f}]"
    assert paired_difference({"a": 0.2}, {"a": 0.1}).format(signed=True).startswith("+10.0")

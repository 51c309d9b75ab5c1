"""Bootstrap intervals on tiny item sets whose bootstrap distribution can be enumerated by hand.

With two equally likely values x < y per draw (two seeds, or two items), a
resampled mean is x, (x+y)/2 or y with probabilities 1/4, 1/2, 1/4, so the 95%
percentile interval is exactly [x, y] (each end carries 25% > 2.5% of the mass).
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from qtbench.report.intervals import (
    AVG,
    PROCEDURE,
    group_interval,
    interval_table,
    paired_difference,
    resolvable_caption,
    resolvable_difference,
    significance_mark,
)


def test_seeds_are_resampled():
    # two seeds scoring 10 and 20 on every item: only the seed draw matters
    out = group_interval({"t": [[10.0, 10.0, 10.0], [20.0, 20.0, 20.0]]})
    assert out.loc["t", ["mean", "low", "high"]].tolist() == [15.0, 10.0, 20.0]
    assert out.loc["t", "n_seeds"] == 2 and out.loc["t", "n_items"] == 3
    # bootstrap standard error of a mean of two values 10, 20: sqrt(25 / 2) = 3.54 (plug-in variance 25)
    assert out.loc["t", "se"] == pytest.approx(np.sqrt(12.5), rel=0.05)


def test_items_are_resampled_within_each_task_and_avg_carries_both():
    out = group_interval({"t": [[0.0, 100.0]], "u": [[40.0, 40.0, 40.0]]})
    assert out.index.tolist() == ["t", "u", AVG]
    assert out.loc["t", ["mean", "low", "high"]].tolist() == [50.0, 0.0, 100.0]
    assert out.loc["u", ["mean", "low", "high"]].tolist() == [40.0, 40.0, 40.0]
    # avg = (t + 40) / 2 takes 20, 45, 70 with probabilities 1/4, 1/2, 1/4
    assert out.loc[AVG, ["mean", "low", "high"]].tolist() == [45.0, 20.0, 70.0]
    assert out.loc[AVG, "n_items"] == 5


def test_mean_over_seeds_and_standard_error_of_a_proportion():
    rng = np.random.default_rng(3)
    seeds = np.zeros((3, 100))
    for row, k in zip(seeds, (30, 40, 50)):
        row[rng.permutation(100)[:k]] = 100.0
    out = group_interval({"t": seeds}, n_resamples=4000)
    assert out.loc["t", "mean"] == pytest.approx(40.0)  # (30 + 40 + 50) / 3
    # one seed, 30 of 100 items right: the bootstrap SE of a proportion is sqrt(p (1 - p) / n) = 4.58 points
    one = group_interval({"t": seeds[:1]}, n_resamples=20000)
    assert one.loc["t", "mean"] == 30.0
    assert one.loc["t", "se"] == pytest.approx(100 * np.sqrt(0.3 * 0.7 / 100), rel=0.03)
    assert one.loc["t", "low"] == pytest.approx(30 - 1.96 * 4.58, abs=1.5)
    assert one.loc["t", "high"] == pytest.approx(30 + 1.96 * 4.58, abs=1.5)


def test_identical_methods_give_zero_and_are_not_significant():
    rng = np.random.default_rng(0)
    a = {"t": (rng.random((3, 50)) < 0.5) * 100.0, "u": rng.random((3, 40)) * 100.0}
    same = paired_difference(a, a, pair_seeds=True)
    assert (same[["delta", "low", "high"]] == 0.0).all().all()
    assert not same["significant"].any()
    # with each side's seeds drawn independently the interval straddles 0
    indep = paired_difference(a, a)
    assert (indep["delta"] == 0.0).all()
    assert ((indep["low"] < 0) & (indep["high"] > 0)).all()
    assert not indep["significant"].any()


@pytest.mark.parametrize("method", ["percentile", "BCa", "basic"])
def test_a_constant_shift_is_recovered_exactly(method):
    rng = np.random.default_rng(1)
    b = {"t": (rng.random((1, 30)) < 0.4) * 100.0, "u": rng.random((1, 20)) * 100.0}
    a = {task: m + 2.5 for task, m in b.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # BCa on a degenerate distribution must not warn or give NaN
        out = paired_difference(a, b, method=method)
    for task in ("t", "u", AVG):
        assert out.loc[task, "delta"] == pytest.approx(2.5, abs=1e-9)
        assert out.loc[task, "low"] == pytest.approx(2.5, abs=1e-9)
        assert out.loc[task, "high"] == pytest.approx(2.5, abs=1e-9)
        assert out.loc[task, "significant"]
    assert out.loc["t", "mean_b"] == pytest.approx(b["t"].mean())
    assert out.loc["t", "mean_a"] == pytest.approx(b["t"].mean() + 2.5)


def test_constant_shift_with_several_paired_seeds():
    rng = np.random.default_rng(2)
    b = {"t": rng.random((3, 25)) * 100.0}
    out = paired_difference({"t": b["t"] - 4.0}, b, pair_seeds=True)
    assert out.loc[AVG, ["delta", "low", "high"]].tolist() == pytest.approx([-4.0, -4.0, -4.0], abs=1e-9)
    assert out.loc[AVG, "significant"]


def test_significance_needs_the_interval_to_exclude_zero():
    # per-item differences 0 and 100: delta 50 in [0, 100] - touches 0, not significant
    touch = paired_difference({"t": [[100.0, 100.0]]}, {"t": [[100.0, 0.0]]})
    assert touch.loc["t", ["delta", "low", "high"]].tolist() == [50.0, 0.0, 100.0]
    assert not touch.loc["t", "significant"]
    # per-item differences 10 and 20: delta 15 in [10, 20]
    clear = paired_difference({"t": [[60.0, 70.0]]}, {"t": [[50.0, 50.0]]})
    assert clear.loc["t", ["delta", "low", "high"]].tolist() == [15.0, 10.0, 20.0]
    assert clear.loc["t", "significant"]
    assert significance_mark(clear.loc["t", "significant"]) == "*"
    assert significance_mark(touch.loc["t", "significant"]) == ""
    assert significance_mark(None) == ""


def test_pairing_is_by_doc_id_for_frames():
    a = pd.DataFrame([[100.0, 0.0, 100.0]], columns=[7, 3, 5])
    b = pd.DataFrame([[0.0, 0.0, 100.0]], columns=[5, 3, 7])  # the same items in another order
    out = paired_difference({"t": a}, {"t": b})
    # per item: doc 7: 100 - 100, doc 3: 0 - 0, doc 5: 100 - 0 -> differences 0, 0, 100
    assert out.loc["t", "delta"] == pytest.approx(100 / 3)
    assert out.loc["t", "low"] == 0.0 and out.loc["t", "high"] == 100.0
    with pytest.raises(ValueError, match=r"task 't'.*1 doc ids only in a, e\.g\. \[7\]; 1 only in b, e\.g\. \[9\]"):
        paired_difference({"t": a}, {"t": b.rename(columns={7: 9})})


def test_results_are_reproducible_and_seeded():
    rng = np.random.default_rng(4)
    a = {"t": rng.random((2, 60)) * 100.0}
    b = {"t": rng.random((3, 60)) * 100.0}
    first = paired_difference(a, b, seed=7)
    pd.testing.assert_frame_equal(first, paired_difference(a, b, seed=7))
    assert first.loc["t", "low"] != paired_difference(a, b, seed=8).loc["t", "low"]


def test_resolvable_difference_is_the_median_half_width():
    def frame(rows):
        return pd.DataFrame(rows, columns=["task", "low", "high"]).set_index("task")

    vs_full = [frame([("t", -9.0, 9.0), (AVG, -1.0, 1.0)]), frame([("t", 0.0, 10.0), (AVG, 0.0, 4.0)]),
               frame([(AVG, -3.0, 3.0)])]
    assert resolvable_difference(vs_full) == 2.0  # half-widths 1, 2, 3 on avg
    assert resolvable_difference(vs_full[:2]) == 1.5  # 1 and 2
    assert resolvable_difference(vs_full, task=None) == 3.0  # every row: 9, 1, 5, 2, 3 -> median 3
    assert np.isnan(resolvable_difference([]))


def test_resolvable_difference_of_a_real_interval():
    out = paired_difference({"t": [[60.0, 70.0]]}, {"t": [[50.0, 50.0]]})
    assert resolvable_difference(out) == 5.0  # [10, 20] on avg
    caption = resolvable_caption(5.0, n_resamples=2000)
    assert caption.startswith(PROCEDURE.format(level=0.95, n=2000))
    assert "95% intervals: bootstrap (2000 replicates)" in caption
    assert caption.endswith("5.00 points.")


@pytest.mark.parametrize("a, b, expected", [
    ({"t": [[1.0]]}, {"u": [[1.0]]}, r"same tasks on both sides"),
    ({"t": [[1.0, 2.0]]}, {"t": [[1.0]]}, r"a has 2 items, b has 1"),
    ({"t": [[1.0]], "u": [[1.0], [2.0]]}, {"t": [[1.0]], "u": [[1.0]]}, r"a: every task needs the same seeds"),
    ({"t": [[np.nan, 1.0]]}, {"t": [[1.0, 1.0]]}, r"a, task 't': scores must be finite"),
    ({AVG: [[1.0, 2.0]]}, {AVG: [[1.0, 2.0]]}, r"'avg' is reserved"),
    ({"t": [[1.0]]}, {"t": [[2.0]]}, r"nothing to resample"),
    ({"t": [[1.0, 2.0]]}, {"t": [[1.0, 2.0], [3.0, 4.0]]}, None),
])
def test_bad_input(a, b, expected):
    if expected is None:  # unequal seed counts are fine unless seeds are paired
        paired_difference(a, b)
        with pytest.raises(ValueError, match="pair_seeds needs the same number of seeds"):
            paired_difference(a, b, pair_seeds=True)
        return
    with pytest.raises(ValueError, match=expected):
        paired_difference(a, b)


def test_paired_seeds_are_matched_by_label_for_frames():
    a = pd.DataFrame([[10.0, 10.0], [30.0, 30.0]], index=[0, 1], columns=[1, 2])
    b = pd.DataFrame([[25.0, 25.0], [5.0, 5.0]], index=[1, 0], columns=[1, 2])  # seed 1 first
    out = paired_difference({"t": a}, {"t": b}, pair_seeds=True)
    # seed 0: 10 - 5, seed 1: 30 - 25 -> a constant +5 whichever seeds are drawn
    assert out.loc["t", ["delta", "low", "high"]].tolist() == pytest.approx([5.0, 5.0, 5.0], abs=1e-9)
    with pytest.raises(ValueError, match=r"pair_seeds needs the same seeds on both sides, a has \[0, 1\], b has \[1, 2\]"):
        paired_difference({"t": a}, {"t": b.rename(index={0: 2})}, pair_seeds=True)


def test_interval_table_for_the_results_tables():
    full = {"t": [[50.0, 50.0]], "u": [[0.0, 100.0]]}
    random = {"t": [[40.0, 40.0]], "u": [[0.0, 100.0]]}
    method = {"t": [[60.0, 70.0]], "u": [[0.0, 100.0]]}
    groups = {("tiny", "full", "s1-t1"): full, ("tiny", "random+random", "s0.25-t0.5"): random,
              ("tiny", "q_tuning", "s0.25-t0.5"): method}
    to_full = {key: ("tiny", "full", "s1-t1") for key in groups}
    to_random = {("tiny", "q_tuning", "s0.25-t0.5"): ("tiny", "random+random", "s0.25-t0.5")}
    table = interval_table(groups, {"full": to_full, "random": to_random})
    assert len(table) == 9 and table["task"].tolist()[:3] == ["t", "u", AVG]
    q = table[table["group"] == ("tiny", "q_tuning", "s0.25-t0.5")].set_index("task")
    # q_tuning - full on t: items 10, 20 -> 15 in [10, 20]; u: identical -> 0; avg: (t + 0) / 2 -> 7.5 in [5, 10]
    assert q.loc["t", ["delta_full", "delta_full_low", "delta_full_high"]].tolist() == [15.0, 10.0, 20.0]
    assert q.loc[AVG, ["delta_full", "delta_full_low", "delta_full_high"]].tolist() == [7.5, 5.0, 10.0]
    assert q.loc[AVG, "delta_full_significant"] is True
    assert q.loc["u", "delta_full_significant"] is False
    # vs random+random: t items 20, 30 -> 25 in [20, 30]
    assert q.loc["t", ["delta_random", "delta_random_low", "delta_random_high"]].tolist() == [25.0, 20.0, 30.0]
    f = table[table["group"] == ("tiny", "full", "s1-t1")].set_index("task")
    assert np.isnan(f.loc[AVG, "delta_full"]) and f.loc[AVG, "delta_full_significant"] is None
    assert np.isnan(f.loc[AVG, "delta_random"])
    r = table[table["group"] == ("tiny", "random+random", "s0.25-t0.5")].set_index("task")
    assert r.loc[AVG, ["mean", "delta_full"]].tolist() == [45.0, -5.0]  # (40 + 50) / 2; t: -10 on every item
    # half-widths on avg of the "vs full" intervals: q_tuning 2.5, random+random 0 -> median 1.25
    assert resolvable_difference(table, low="delta_full_low", high="delta_full_high") == 1.25
    with pytest.raises(KeyError, match="not among the groups"):
        interval_table({"a": full}, {"full": {"a": "b"}})


def test_contrast_is_the_weighted_sum_of_group_means():
    from qtbench.report.intervals import contrast, paired_difference

    # one task, three items; a: seeds (1, 0, 1) and (1, 1, 1) -> mean 5/6 x 100; b: (0, 0, 1) -> 1/3 x 100;
    # z: (0, 0, 0) -> 0.  a - 0.5 b - 0.5 z = 83.33 - 16.67 = 66.67
    a = {"t": np.array([[100.0, 0.0, 100.0], [100.0, 100.0, 100.0]])}
    b = {"t": np.array([[0.0, 0.0, 100.0]])}
    z = {"t": np.zeros((1, 3))}
    result = contrast([a, b, z], [1.0, -0.5, -0.5], n_resamples=200)
    assert result.loc["t", "estimate"] == pytest.approx(200 / 3)
    assert result.loc["avg", "estimate"] == pytest.approx(200 / 3)
    assert result.loc["t", "low"] <= result.loc["t", "estimate"] <= result.loc["t", "high"]
    # weights (1, -1) are the paired difference, draw for draw
    two = contrast([a, b], [1.0, -1.0], n_resamples=200)
    diff = paired_difference(a, b, n_resamples=200)
    assert two.loc["t", "low"] == pytest.approx(diff.loc["t", "low"])
    assert two.loc["t", "high"] == pytest.approx(diff.loc["t", "high"])
    with pytest.raises(ValueError, match="one weight per group"):
        contrast([a, b], [1.0])

"""`evaluation.statistics`: paired t intervals and p-values against scipy.stats, the bootstrap interval, Holm's
procedure on a hand-computed example, and `compare_arms` on constructed studies."""

import numpy as np
import pytest
import scipy.stats

from diffusers_spectrum.evaluation.statistics import (
    bootstrap_interval,
    compare_arms,
    comparison_phrase,
    holm_adjust,
    mean_sd,
    paired_differences,
    t_interval,
    t_interval_from_summary,
)


def test_paired_t_interval_and_p_value_equal_scipys_paired_t_test():
    rng = np.random.default_rng(0)
    for n in (3, 5, 12):
        baseline = rng.normal(200, 20, n)  # a large seed effect shared by both arms
        arm = baseline + rng.normal(-10, 4, n)
        _, differences = paired_differences(dict(enumerate(arm)), dict(enumerate(baseline)))
        ours = t_interval(differences, confidence=0.95)
        reference = scipy.stats.ttest_rel(arm, baseline)
        low, high = reference.confidence_interval(0.95)
        assert ours["lo"] == pytest.approx(low, rel=1e-10) and ours["hi"] == pytest.approx(high, rel=1e-10)
        assert ours["p_value"] == pytest.approx(reference.pvalue, rel=1e-10)
        assert ours["sd"] == pytest.approx(np.std(differences, ddof=1), rel=1e-12)  # the sample SD
        assert ours["df"] == n - 1
    # another confidence level, against the one-sample test of the differences
    d = np.array([-9.4, -23.8, -17.8])
    reference = scipy.stats.ttest_1samp(d, 0.0).confidence_interval(0.99)
    ours = t_interval(d, 0.99)
    assert (ours["lo"], ours["hi"]) == pytest.approx((reference.low, reference.high), rel=1e-10)
    summary = t_interval_from_summary(float(d.mean()), float(d.std(ddof=1)), 3, 0.99)
    assert (summary["lo"], summary["hi"], summary["p_value"]) == pytest.approx(
        (ours["lo"], ours["hi"], ours["p_value"])
    )


def test_t_interval_edge_cases():
    one = t_interval([1.5])
    assert one["mean"] == 1.5 and np.isnan(one["lo"]) and np.isnan(one["p_value"])
    constant = t_interval([2.0, 2.0, 2.0])
    assert (constant["lo"], constant["hi"], constant["p_value"]) == (2.0, 2.0, 0.0)
    assert t_interval([0.0, 0.0])["p_value"] == 1.0
    with pytest.raises(ValueError, match="finite"):
        t_interval([1.0, float("nan")])
    assert mean_sd([1.0, 2.0, 4.0])["sd"] == pytest.approx(np.std([1.0, 2.0, 4.0], ddof=1))


def test_bootstrap_interval_is_seeded_and_within_the_range_at_three_values():
    values = [-9.4, -23.8, -17.8]
    low, high = bootstrap_interval(values, seed=3)
    assert (low, high) == bootstrap_interval(values, seed=3)
    assert min(values) <= low < np.mean(values) < high <= max(values)  # cannot be wider than the range at n = 3
    many = np.random.default_rng(1).normal(0, 1, 400)
    low, high = bootstrap_interval(many, n_resamples=4000)
    t = t_interval(many)
    assert low == pytest.approx(t["lo"], abs=0.03) and high == pytest.approx(t["hi"], abs=0.03)  # large n: agree
    assert np.isnan(bootstrap_interval([1.0])[0])


def test_holm_adjustment_hand_computed():
    # sorted p: 0.005 (x4 = 0.02), 0.01 (x3 = 0.03), 0.03 (x2 = 0.06), 0.04 (x1 = 0.04 -> monotone: 0.06)
    adjusted = holm_adjust([0.01, 0.04, 0.03, 0.005])
    np.testing.assert_allclose(adjusted, [0.03, 0.06, 0.06, 0.02])
    np.testing.assert_allclose(holm_adjust([0.5, 0.9]), [1.0, 1.0])  # capped at 1
    adjusted = holm_adjust([0.01, float("nan"), 0.02])  # NaN (no interval) is left out of the family
    np.testing.assert_allclose(adjusted[[0, 2]], [0.02, 0.02])
    assert np.isnan(adjusted[1])


def test_compare_arms_pairs_by_seed_and_corrects_across_arms_and_metrics():
    seed_effect = {0: 180.0, 1: 220.0, 2: 200.0}
    results = {
        "base": {"swd": dict(seed_effect), "loss": {0: 0.69, 1: 0.68, 2: 0.70}},
        # better in every seed by ~15 over a seed effect of +-20: unpaired spreads overlap, the pairing separates
        "good": {
            "swd": {s: v - 15 + d for (s, v), d in zip(seed_effect.items(), (0.1, -0.2, 0.1))},
            "loss": {0: 0.62, 1: 0.64, 2: 0.60},
        },
        "same": {
            "swd": {s: v + d for (s, v), d in zip(seed_effect.items(), (3.0, -4.0, 1.0))},
            "loss": {0: 0.70, 1: 0.67, 2: 0.69},
        },
    }
    rows = compare_arms(results, "base", {"swd": True, "loss": True})
    assert [(r["arm"], r["metric"]) for r in rows] == [
        ("good", "swd"),
        ("good", "loss"),
        ("same", "swd"),
        ("same", "loss"),
    ]
    by = {(r["arm"], r["metric"]): r for r in rows}
    assert by[("good", "swd")]["differences"] == pytest.approx([-14.9, -15.2, -14.9])
    assert by[("good", "swd")]["separated"] and by[("good", "swd")]["outcome"] == "better"
    assert not by[("same", "swd")]["separated"] and by[("same", "swd")]["outcome"] == "not separated"
    p = [r["p_value"] for r in rows]
    np.testing.assert_allclose([r["p_holm"] for r in rows], holm_adjust(p))
    assert all(r["family_size"] == 4 for r in rows)
    # the corrected interval of the smallest p-value is the t interval at 1 - alpha / 4
    first = min(rows, key=lambda r: r["p_value"])
    corrected = t_interval(first["differences"], 1 - 0.05 / 4)
    assert (first["holm_lo"], first["holm_hi"]) == pytest.approx((corrected["lo"], corrected["hi"]))
    assert "per seed" in comparison_phrase(by[("good", "swd")])
    # a worse arm is named worse; a metric with one run per arm has no interval and stays out of the family
    results["bad"] = {
        "swd": {s: v + 30 + d for (s, v), d in zip(seed_effect.items(), (0.5, -0.5, 0.2))},
        "loss": {0: 0.69},
    }
    rows = compare_arms(results, "base", {"swd": True, "loss": True}, arms=["bad"])
    assert rows[0]["outcome"] == "worse" and rows[1]["outcome"] == "one run" and rows[0]["family_size"] == 1
    with pytest.raises(ValueError, match="share none"):
        paired_differences({0: 1.0}, {1: 2.0})
    # one family over arms with their own baselines (e.g. two formulations)
    two = {"a/none": results["base"], "a/x": results["good"], "b/none": results["base"], "b/x": results["same"]}
    rows = compare_arms(two, {"a/x": "a/none", "b/x": "b/none"}, {"swd": True})
    assert [(r["arm"], r["baseline"], r["outcome"]) for r in rows] == [
        ("a/x", "a/none", "better"),
        ("b/x", "b/none", "not separated"),
    ]
    assert all(r["family_size"] == 2 for r in rows)


def test_paired_differences_draws_the_seeds_and_both_intervals():
    from matplotlib.figure import Figure

    from diffusers_spectrum.evaluation.plotting import paired_differences

    rows = [
        {
            "differences": [1.0, 2.0, 3.0],
            "outcome": "x",
            "mean": 2.0,
            "lo": 0.5,
            "hi": 3.5,
            "holm_lo": 0.0,
            "holm_hi": 4.0,
        },
        {"differences": [5.0], "outcome": "one run", "mean": 5.0},
    ]
    ax = Figure().add_subplot()
    paired_differences(ax, rows)
    assert len(ax.containers) == 2  # one run draws no interval
    t_bar, holm_bar = (container.lines[2][0].get_segments()[0] for container in ax.containers)
    np.testing.assert_allclose(t_bar, [[0.15, 0.5], [0.15, 3.5]])
    np.testing.assert_allclose(holm_bar, [[0.3, 0.0], [0.3, 4.0]])
    seeds = [line.get_ydata().tolist() for line in ax.lines if line.get_marker() == "o"]
    assert seeds == [[1.0, 2.0, 3.0], [5.0]]

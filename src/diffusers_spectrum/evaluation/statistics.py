"""Paired comparisons of study arms: per-seed differences against a baseline, t and bootstrap intervals, Holm's
correction across arms x metrics. The one statistics module of the studies (``benchmarks/``) and of ``evaluate-*``.

A study trains every arm with the same seeds (initialisation, data order, sampling noise, metric seeds), so arm and
baseline results of one seed share a large seed effect: the honest comparison is the **paired** difference
``d_s = arm_s - baseline_s`` over the shared seeds ``s``, not two unpaired means with their spreads.

- Spread: the sample standard deviation (``ddof = 1``) everywhere.
- Interval: Student's t interval of the mean paired difference, ``mean(d) +- t_{1 - a/2, n-1} sd(d) / sqrt(n)``,
  with its two-sided p-value (the paired t-test, as ``scipy.stats.ttest_rel``). Beside it a percentile bootstrap
  interval of the mean difference (resampling seeds); with a handful of seeds the bootstrap interval is too narrow
  (at n = 3 it cannot be wider than the range of the three differences), so it is reported, never decisive.
- Multiplicity: every arm x metric comparison of a study is one family. Holm's step-down procedure (Holm 1979) sorts
  the p-values ``p_(1) <= ... <= p_(m)`` and tests ``p_(i)`` at ``alpha / (m - i + 1)``; the adjusted p-values are
  ``max_{j <= i} min(1, (m - j + 1) p_(j))``. The **corrected interval** of the i-th comparison is the t interval at
  confidence ``1 - alpha / (m - i + 1)``. A difference is **separated** only when its Holm-adjusted p-value is at most
  ``alpha``: equivalently, its corrected interval excludes zero and so do those of every comparison with a smaller
  p-value (the step-down stops at the first that does not).
- A metric without seed replicates (one training run per arm) gets its difference and no interval: "one run".

Everything here works on plain floats (numbers read from a study's JSON), so a page can be regenerated from stored
results without the models.
"""

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import scipy.stats


__all__ = [
    "ALPHA",
    "compare_arms",
    "bootstrap_interval",
    "comparison_phrase",
    "comparison_table",
    "holm_adjust",
    "mean_sd",
    "paired_differences",
    "t_interval",
    "t_interval_from_summary",
]

ALPHA = 0.05  # family-wise error rate of a study's comparisons
BOOTSTRAP_RESAMPLES = 10_000


def mean_sd(values: Iterable[float]) -> dict:
    """``{"mean", "sd", "n"}`` of ``values`` with the sample standard deviation (``ddof = 1``; NaN when ``n < 2``)."""
    array = np.asarray(list(values), dtype=np.float64)
    if array.size == 0:
        raise ValueError("mean_sd: no values.")
    sd = float(array.std(ddof=1)) if array.size > 1 else float("nan")
    return {"mean": float(array.mean()), "sd": sd, "n": int(array.size)}


def t_interval(values: Sequence[float], confidence: float = 0.95) -> dict:
    """Student's t interval of the mean of ``values`` (e.g. paired differences) and the two-sided p-value of mean 0.

    Returns ``{"mean", "sd", "se", "n", "df", "lo", "hi", "p_value", "confidence"}``. ``n = 1``: no interval (NaN
    bounds and p-value). Zero spread: the interval collapses to the mean and ``p`` is 0 (all differences equal and
    non-zero) or 1 (all zero).
    """
    if not 0 < confidence < 1:
        raise ValueError(f"t_interval: confidence must be in (0, 1), got {confidence}.")
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1 or array.size == 0 or not np.isfinite(array).all():
        raise ValueError(f"t_interval: need a 1-D sequence of finite numbers, got {values!r}.")
    sd = float(array.std(ddof=1)) if array.size > 1 else float("nan")
    return t_interval_from_summary(float(array.mean()), sd, int(array.size), confidence)


def t_interval_from_summary(mean: float, sd: float, n: int, confidence: float = 0.95) -> dict:
    """`t_interval` from a stored mean, sample standard deviation (``ddof = 1``) and count, for statistics kept as
    running sums (flat memory). Returns the same keys."""
    if not 0 < confidence < 1:
        raise ValueError(f"t_interval_from_summary: confidence must be in (0, 1), got {confidence}.")
    result = {"mean": float(mean), "n": int(n), "df": int(n) - 1, "confidence": confidence}
    if n < 2 or not np.isfinite(sd):
        nan = float("nan")
        return {**result, "sd": nan, "se": nan, "lo": nan, "hi": nan, "p_value": nan}
    se = float(sd) / np.sqrt(n)
    if se == 0:
        return {**result, "sd": 0.0, "se": 0.0, "lo": mean, "hi": mean, "p_value": 0.0 if mean != 0 else 1.0}
    quantile = float(scipy.stats.t.ppf(0.5 + confidence / 2, n - 1))
    p_value = float(2 * scipy.stats.t.sf(abs(mean) / se, n - 1))
    return {
        **result,
        "sd": float(sd),
        "se": se,
        "lo": mean - quantile * se,
        "hi": mean + quantile * se,
        "p_value": p_value,
    }


def bootstrap_interval(
    values: Sequence[float], confidence: float = 0.95, n_resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (resampled with replacement; seeded, deterministic).

    ``n = 1`` gives ``(nan, nan)``. With few values it is too narrow (see the module docstring): report it, do not
    decide with it.
    """
    array = np.asarray(values, dtype=np.float64)
    if array.size < 2:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = array[rng.integers(0, array.size, (n_resamples, array.size))].mean(axis=1)
    tail = (1 - confidence) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return float(low), float(high)


def paired_differences(arm: Mapping, baseline: Mapping) -> tuple[list, np.ndarray]:
    """``(keys, arm[k] - baseline[k])`` over the keys (seeds) both hold, in sorted key order.

    Raises a `ValueError` naming both key sets when they share none (nothing to pair).
    """
    keys = sorted(set(arm) & set(baseline), key=str)
    if not keys:
        raise ValueError(
            f"paired_differences: the arm's seeds {sorted(arm, key=str)} and the baseline's "
            f"{sorted(baseline, key=str)} share none; a paired comparison needs runs with the same seeds."
        )
    return keys, np.asarray([float(arm[k]) - float(baseline[k]) for k in keys], dtype=np.float64)


def holm_adjust(p_values: Sequence[float]) -> np.ndarray:
    """Holm-adjusted p-values (step-down, monotone, capped at 1), in the input order. NaN p-values (no interval)
    are left out of the family and stay NaN."""
    p = np.asarray(p_values, dtype=np.float64)
    adjusted = np.full_like(p, np.nan)
    valid = np.flatnonzero(~np.isnan(p))
    m = valid.size
    order = valid[np.argsort(p[valid], kind="stable")]
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[index]))
        adjusted[index] = running
    return adjusted


def compare_arms(
    results: Mapping[str, Mapping[str, Mapping]],
    baseline: str | Mapping[str, str],
    metrics: Mapping[str, bool],
    arms: Sequence[str] | None = None,
    alpha: float = ALPHA,
    n_resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
    correction: str = "holm",
) -> list[dict]:
    """Paired comparison of every arm with ``baseline`` on every metric, Holm-corrected as one family.

    Args:
        results: ``{arm: {metric: {seed: value}}}`` (a metric with a single run per arm: ``{0: value}``).
        baseline: the arm every other arm is compared with, or ``{arm: its baseline}`` (e.g. each formulation's own
            unregularised arm); one Holm family either way.
        metrics: ``{metric: lower_is_better}``; the order is kept in the output.
        arms: the arms to compare (default: every arm but the baseline, in ``results`` order).
        alpha: family-wise error rate.
        n_resamples, seed: the bootstrap intervals.
        correction: ``"holm"`` (the family) or ``"none"`` (descriptive rows outside any family: the "corrected"
            fields repeat the uncorrected ones).

    Returns:
        One dict per arm x metric: ``arm``, ``baseline``, ``metric``, ``lower_is_better``, ``seeds``,
        ``differences`` (arm - baseline per seed), ``arm_mean``, ``baseline_mean``, the t interval fields
        (``mean``, ``sd``, ``n``, ``lo``, ``hi``, ``p_value``, ``confidence``), ``bootstrap_lo/hi``,
        ``family_size``, ``p_holm``, ``holm_confidence`` and ``holm_lo/hi`` (the corrected interval), ``separated``
        (bool) and ``outcome``: ``"better"`` / ``"worse"`` (separated, by ``lower_is_better``), ``"not
        separated"`` or ``"one run"``.
    """
    if isinstance(baseline, str):
        if baseline not in results:
            raise ValueError(f"compare_arms: the baseline {baseline!r} is not among the arms {list(results)}.")
        arms = [a for a in results if a != baseline] if arms is None else list(arms)
        baselines = {arm: baseline for arm in arms}
    else:
        baselines = dict(baseline)
        arms = list(baselines) if arms is None else list(arms)
        if missing := [b for b in baselines.values() if b not in results]:
            raise ValueError(f"compare_arms: baselines {missing} are not among the arms {list(results)}.")
    rows = []
    for arm in arms:
        baseline = baselines[arm]
        for metric, lower_is_better in metrics.items():
            if metric not in results[arm] or metric not in results[baseline]:
                raise ValueError(f"compare_arms: metric {metric!r} missing for {arm!r} or {baseline!r}.")
            seeds, differences = paired_differences(results[arm][metric], results[baseline][metric])
            interval = t_interval(differences, 1 - alpha)
            low, high = bootstrap_interval(differences, 1 - alpha, n_resamples, seed)
            rows.append(
                {
                    "arm": arm,
                    "baseline": baseline,
                    "metric": metric,
                    "lower_is_better": bool(lower_is_better),
                    "seeds": [str(s) for s in seeds],
                    "differences": differences.tolist(),
                    "arm_mean": float(np.mean([float(results[arm][metric][s]) for s in seeds])),
                    "baseline_mean": float(np.mean([float(results[baseline][metric][s]) for s in seeds])),
                    **{k: interval[k] for k in ("mean", "sd", "n", "lo", "hi", "p_value", "confidence")},
                    "bootstrap_lo": low,
                    "bootstrap_hi": high,
                }
            )
    if correction not in ("holm", "none"):
        raise ValueError(f"compare_arms: correction must be 'holm' or 'none', got {correction!r}.")
    adjusted = holm_adjust([r["p_value"] for r in rows]) if correction == "holm" else [r["p_value"] for r in rows]
    valid = [i for i, r in enumerate(rows) if not np.isnan(r["p_value"])]
    ranks = {index: rank for rank, index in enumerate(sorted(valid, key=lambda i: rows[i]["p_value"]))}
    for index, row in enumerate(rows):
        row["family_size"] = len(valid) if correction == "holm" else 1
        if index not in ranks:
            row.update(
                p_holm=float("nan"),
                holm_confidence=float("nan"),
                holm_lo=float("nan"),
                holm_hi=float("nan"),
                separated=False,
                outcome="one run",
            )
            continue
        level = alpha / (len(valid) - ranks[index]) if correction == "holm" else alpha
        corrected = t_interval(row["differences"], 1 - level)
        separated = bool(adjusted[index] <= alpha)
        better = (row["mean"] < 0) == row["lower_is_better"]
        row.update(
            p_holm=float(adjusted[index]),
            holm_confidence=1 - level,
            holm_lo=corrected["lo"],
            holm_hi=corrected["hi"],
            separated=separated,
            outcome=("better" if better else "worse") if separated else "not separated",
        )
    return rows


def _number(value: float, digits: int) -> str:
    return "nan" if value is None or not np.isfinite(value) else f"{value:+.{digits}g}"


def comparison_phrase(row: dict, digits: int = 3, label: str | None = None) -> str:
    """One line for a page: ``"esm - sd-vae, SWD: -8.1 [t -40, +24; Holm -97, +81] per seed -9.4 / -23.8 / ...:
    not separated (p 0.32, Holm 1)"``."""
    name = label or f"{row['arm']} - {row['baseline']}, {row['metric']}"
    per_seed = " / ".join(_number(d, digits) for d in row["differences"])
    if row["outcome"] == "one run":
        return f"{name}: {_number(row['mean'], digits)} (one run, no interval)"
    t_bounds = f"{_number(row['lo'], digits)}, {_number(row['hi'], digits)}"
    return (
        f"{name}: {_number(row['mean'], digits)} [{100 * row['confidence']:.0f}% t {t_bounds};"
        f" Holm-corrected {_number(row['holm_lo'], digits)}, {_number(row['holm_hi'], digits)}] per seed "
        f"{per_seed}: {row['outcome']} (p {row['p_value']:.2g}, Holm {row['p_holm']:.2g})"
    )


def comparison_table(
    rows: Sequence[dict], digits: int = 3, labels: Mapping[str, str] | None = None, corrected: bool = True
) -> list[str]:
    """Markdown lines: one row per comparison (arm - baseline, metric, per-seed differences, mean, t interval, the
    Holm-corrected interval and p-values when ``corrected``, bootstrap interval, outcome)."""
    labels = labels or {}
    holm_head, holm_rule = ("Holm-corrected interval | p (Holm) | ", "---|---|") if corrected else ("p | ", "---|")
    lines = [
        f"| arm - baseline | metric | per seed | mean | 95% t interval | {holm_head}bootstrap interval | outcome |",
        f"|---|---|---|---:|---|{holm_rule}---|---|",
    ]
    for row in rows:
        per_seed = " / ".join(_number(d, digits) for d in row["differences"])
        if row["outcome"] == "one run":
            cells = ["-"] * (4 if corrected else 3)
        else:
            cells = [f"[{_number(row['lo'], digits)}, {_number(row['hi'], digits)}]"]
            if corrected:
                cells += [
                    f"[{_number(row['holm_lo'], digits)}, {_number(row['holm_hi'], digits)}] "
                    f"({100 * row['holm_confidence']:.1f}%)",
                    f"{row['p_value']:.2g} ({row['p_holm']:.2g})",
                ]
            else:
                cells.append(f"{row['p_value']:.2g}")
            cells.append(f"[{_number(row['bootstrap_lo'], digits)}, {_number(row['bootstrap_hi'], digits)}]")
        metric = labels.get(row["metric"], row["metric"])
        lines.append(
            f"| {row['arm']} - {row['baseline']} | {metric} | {per_seed} | {_number(row['mean'], digits)} | "
            + " | ".join(cells)
            + f" | **{row['outcome']}** |"
        )
    return lines

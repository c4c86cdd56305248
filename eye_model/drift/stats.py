"""Statistical drift tests, multiple-testing corrections, effect sizes and flagging.

Families of tests and what they mean:

- ``prediction``: predicted-class distribution. Chi-square test of homogeneity
  on the 2 x K table of reference and window counts; effect = Jensen-Shannon
  distance (base 2, 0-1) between the two class distributions.
- ``output``: ``confidence``, ``entropy`` (of the probabilities, divided by
  log 4, 0-1) and each ``prob_<class>``; two-sample Kolmogorov-Smirnov test;
  effect = Wasserstein-1 distance divided by the reference standard deviation
  (a shift of the mean by 0.1 reference sd gives an effect of 0.1).
- ``image``: the image statistics (``img_sharpness`` as ``log1p``), tested as
  ``output``.
- ``embedding``: one test on the ``emb_*`` vectors: MMD with an RBF kernel
  (bandwidth from the median heuristic on the reference), permutation p-value
  ``(k + 1) / (n_permutations + 1)``; effect = MMD (the square root of the
  unbiased MMD^2, 0 to sqrt(2)).

A feature is *drifted* when its corrected p-value is below ``alpha`` (Holm
within a family, then Bonferroni across the families tested) and its effect is
at or above ``effect_floor`` even after removing what sampling noise could
produce (``effect_lower``, ``effect_margin_z`` noise sd of both samples). Large
windows make every p-value tiny: the floor keeps a harmless shift quiet. Small
windows and a small reference make the effect itself noisy: the margin keeps a
chance deviation of the reference (which every window is compared with) from
raising an alarm on every window.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats
from scipy.spatial.distance import jensenshannon

from eye_model.config import CLASS_NAMES
from eye_model.drift.config import (
    EMBEDDING_FEATURE,
    FAMILIES,
    PREDICTION_FEATURE,
    DriftConfig,
)
from eye_model.drift.features import RecordArrays
from eye_model.drift.heuristics import drop_nonfinite

_N_CLASSES = len(CLASS_NAMES)


@dataclass(frozen=True)
class FeatureResult:
    """Outcome of one drift test.

    Attributes:
        family: ``prediction``, ``output``, ``image`` or ``embedding``.
        feature: column (or derived feature) tested.
        test: ``chi2``, ``ks`` or ``mmd``.
        statistic: the test statistic (chi-square, KS D, or unbiased MMD^2).
        p: raw p-value.
        p_corrected: p-value after Holm (within family) and Bonferroni (across families).
        effect: effect size (JS distance, Wasserstein / reference sd, or MMD).
        effect_lower: the effect minus its sampling noise (see :class:`Comparison`).
        flag: True when ``p_corrected < alpha`` and both ``effect`` and ``effect_lower``
            are at or above ``effect_floor``.
        n_reference: reference values used.
        n_window: window values used.
    """

    family: str
    feature: str
    test: str
    statistic: float
    p: float
    p_corrected: float
    effect: float
    effect_lower: float
    flag: bool
    n_reference: int
    n_window: int


@dataclass(frozen=True)
class Comparison:
    """Outcome of one two-sample comparison, before multiple-testing correction.

    Attributes:
        test: ``chi2``, ``ks`` or ``mmd``.
        statistic: chi-square, KS D, or unbiased MMD^2.
        p: raw p-value.
        effect: effect size (JS distance, Wasserstein / reference sd, or MMD).
        effect_lower: the effect minus what sampling noise of both samples could
            produce (``effect_margin_z`` noise standard deviations), floored at 0.
        n_reference: reference values used.
        n_window: window values used.
    """

    test: str
    statistic: float
    p: float
    effect: float
    effect_lower: float
    n_reference: int
    n_window: int


def compare_class_distributions(
    reference_codes: np.ndarray, window_codes: np.ndarray, *, margin_z: float = 2.0
) -> Comparison:
    """Chi-square test of homogeneity of two predicted-class distributions.

    A test of homogeneity (2 x K table) rather than goodness of fit against the
    reference proportions: the reference is itself a sample, and treating its
    proportions as exact inflates false alarms on large windows. Classes absent
    from both sides are dropped (the zero-cell smoothing of this test).

    Under no drift the squared JS distance (bits) is about
    ``chi2 * (1/n + 1/m) / (8 ln 2)`` with ``chi2`` of K - 1 degrees of freedom;
    ``effect_lower`` removes its mean plus ``margin_z`` standard deviations.

    Args:
        reference_codes: class codes 0-3 of the reference.
        window_codes: class codes 0-3 of the window.
        margin_z: noise standard deviations removed from the effect.

    Returns:
        The comparison; effect = Jensen-Shannon distance (base 2, 0-1).
    """
    reference_counts = np.bincount(reference_codes, minlength=_N_CLASSES).astype(np.float64)
    window_counts = np.bincount(window_codes, minlength=_N_CLASSES).astype(np.float64)
    n_reference, n_window = int(reference_counts.sum()), int(window_counts.sum())
    effect = float(jensenshannon(reference_counts / n_reference, window_counts / n_window, base=2))
    present = (reference_counts + window_counts) > 0
    freedom = int(present.sum()) - 1
    if freedom < 1:
        return Comparison("chi2", 0.0, 1.0, effect, 0.0, n_reference, n_window)
    table = np.vstack([reference_counts[present], window_counts[present]])
    result = stats.chi2_contingency(table, correction=False)
    noise = (1.0 / n_reference + 1.0 / n_window) / (8.0 * math.log(2.0))
    margin = noise * (freedom + margin_z * math.sqrt(2.0 * freedom))
    effect_lower = math.sqrt(max(effect**2 - margin, 0.0))
    return Comparison(
        "chi2",
        float(result.statistic),
        float(result.pvalue),
        effect,
        effect_lower,
        n_reference,
        n_window,
    )


def compare_feature_distributions(
    reference: np.ndarray, window: np.ndarray, *, margin_z: float = 2.0
) -> Comparison:
    """Two-sample Kolmogorov-Smirnov test with a scale-free Wasserstein effect.

    The effect is the Wasserstein-1 distance divided by the reference standard
    deviation (the pooled sd when the reference is constant, 1 when both are).
    For a shift of location it equals the difference of means in sd units, whose
    noise is ``sqrt(1/n + 1/m)``; ``effect_lower`` subtracts ``margin_z`` of those.

    Args:
        reference: finite reference values.
        window: finite window values.
        margin_z: noise standard deviations removed from the effect.

    Returns:
        The comparison.
    """
    # scipy sorts again internally; sorted input makes its sorts and searches ~2x faster.
    reference, window = np.sort(reference), np.sort(window)
    result = stats.ks_2samp(reference, window)
    distance = float(stats.wasserstein_distance(reference, window))
    scale = float(np.std(reference, ddof=1)) if reference.size > 1 else 0.0
    if not scale > 0:
        scale = float(np.std(np.concatenate([reference, window]), ddof=1))
    if not scale > 0:
        scale = 1.0
    effect = distance / scale
    noise = math.sqrt(1.0 / reference.size + 1.0 / window.size)
    return Comparison(
        "ks",
        float(result.statistic),
        float(result.pvalue),
        effect,
        max(effect - margin_z * noise, 0.0),
        int(reference.size),
        int(window.size),
    )


def _subsample_rows(values: np.ndarray, limit: int, rng: np.random.Generator) -> np.ndarray:
    """At most ``limit`` rows drawn without replacement (all rows when fewer)."""
    if values.shape[0] <= limit:
        return values
    return values[np.sort(rng.choice(values.shape[0], size=limit, replace=False))]


def compare_embeddings(
    reference: np.ndarray,
    window: np.ndarray,
    *,
    n_permutations: int = 500,
    max_samples: int = 1000,
    seed: int = 0,
    margin_z: float = 2.0,
) -> Comparison:
    """Kernel two-sample test (MMD, RBF kernel) with a permutation p-value.

    Columns are standardised with the reference mean and sd; the kernel is
    ``exp(-d^2 / (2 * median(d^2)))`` with the median of the squared distances
    between reference rows (median heuristic). The statistic is the unbiased
    MMD^2; all permutations are evaluated with one matrix product per chunk.
    The effect is MMD = sqrt(max(MMD^2, 0)), between 0 and sqrt(2); for Gaussian
    8-dimensional embeddings, MMD 0.1 is a mean shift of about 0.5 sd (norm).
    ``effect_lower`` subtracts the permutation mean plus ``margin_z`` permutation
    sd from MMD^2 before the square root.

    Args:
        reference: reference vectors, shape (n, d), finite.
        window: window vectors, shape (m, d), finite.
        n_permutations: permutations; the p-value is ``(k + 1) / (n_permutations + 1)``.
        max_samples: most rows per side (seeded subsample) to bound time and memory.
        seed: seed of the subsample and the permutations.
        margin_z: noise standard deviations removed from the effect.

    Returns:
        The comparison (row counts are those of the subsamples).
    """
    rng = np.random.default_rng(seed)
    centre = reference.mean(axis=0)
    spread = reference.std(axis=0, ddof=1)
    spread = np.where(spread > 0, spread, 1.0)
    x = (_subsample_rows(reference, max_samples, rng) - centre) / spread
    y = (_subsample_rows(window, max_samples, rng) - centre) / spread
    n_x, n_y = x.shape[0], y.shape[0]
    pooled = np.vstack([x, y])
    norms = np.einsum("ij,ij->i", pooled, pooled)
    squared = np.maximum(norms[:, None] + norms[None, :] - 2.0 * (pooled @ pooled.T), 0.0)
    reference_pairs = squared[:n_x, :n_x][np.triu_indices(n_x, k=1)]
    bandwidth = float(np.median(reference_pairs)) if reference_pairs.size else 1.0
    if not bandwidth > 0:
        bandwidth = 1.0
    kernel = np.exp(squared / (-2.0 * bandwidth))
    del squared
    np.fill_diagonal(kernel, 0.0)  # the unbiased statistic leaves out k(x_i, x_i)
    row_sums = kernel.sum(axis=1)
    total = float(row_sums.sum())

    def compute_statistics(in_x: np.ndarray) -> np.ndarray:
        """Unbiased MMD^2 for each column of the 0/1 membership matrix ``in_x``."""
        product = kernel @ in_x
        within_x = np.einsum("ij,ij->j", in_x, product)
        cross = product.sum(axis=0) - within_x
        within_y = total - 2.0 * (row_sums @ in_x) + within_x
        return (
            within_x / (n_x * (n_x - 1)) + within_y / (n_y * (n_y - 1)) - 2.0 * cross / (n_x * n_y)
        )

    membership = np.zeros(n_x + n_y)
    membership[:n_x] = 1.0
    observed = float(compute_statistics(membership[:, None])[0])
    permuted = np.empty(n_permutations)
    chunk = 100
    for start in range(0, n_permutations, chunk):
        size = min(chunk, n_permutations - start)
        shuffled = rng.permuted(np.repeat(membership[:, None], size, axis=1), axis=0)
        permuted[start : start + size] = compute_statistics(shuffled)
    # A small tolerance so permutations equal to the observed value count as exceeding.
    exceed = int(np.count_nonzero(permuted >= observed - 1e-12))
    p_value = (exceed + 1) / (n_permutations + 1)
    margin = float(permuted.mean() + margin_z * permuted.std())
    return Comparison(
        "mmd",
        observed,
        p_value,
        math.sqrt(max(observed, 0.0)),
        math.sqrt(max(observed - margin, 0.0)),
        n_x,
        n_y,
    )


def correct_holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm step-down adjusted p-values (family-wise error control).

    Args:
        p_values: raw p-values of one family.

    Returns:
        Adjusted p-values in the input order, capped at 1.
    """
    raw = np.asarray(p_values, dtype=np.float64)
    count = raw.size
    if count == 0:
        return raw
    order = np.argsort(raw, kind="stable")
    scaled = raw[order] * (count - np.arange(count))
    adjusted = np.minimum(np.maximum.accumulate(scaled), 1.0)
    result = np.empty(count)
    result[order] = adjusted
    return result


def run_tests(
    reference: RecordArrays, window: RecordArrays, config: DriftConfig, notes: list[str]
) -> list[tuple[str, str, Comparison]]:
    """Run every configured test whose columns both sides have.

    Args:
        reference: arrays of the reference profile.
        window: arrays of the window.
        config: families, features and budgets to test.
        notes: receives one remark per feature left untested (and why).

    Returns:
        (family, feature, comparison) per test run, before corrections.
    """
    results: list[tuple[str, str, Comparison]] = []
    margin_z = config.effect_margin_z
    if "prediction" in config.families:
        outcome = compare_class_distributions(
            reference.class_codes, window.class_codes, margin_z=margin_z
        )
        results.append(("prediction", PREDICTION_FEATURE, outcome))
    for family, features in config.scalar_features():
        if family not in config.families:
            continue
        for feature in features:
            if feature not in reference.continuous or feature not in window.continuous:
                notes.append(f"{family}.{feature} not tested: column missing")
                continue
            reference_values = drop_nonfinite(reference.continuous[feature])
            window_values = drop_nonfinite(window.continuous[feature])
            if (
                reference_values.size < config.min_reference_records
                or window_values.size < config.min_records
            ):
                notes.append(f"{family}.{feature} not tested: too few finite values")
                continue
            outcome = compare_feature_distributions(
                reference_values, window_values, margin_z=margin_z
            )
            results.append((family, feature, outcome))
    if "embedding" in config.families:
        if reference.embedding is None or window.embedding is None:
            notes.append("embedding not tested: emb_* columns missing")
        else:
            reference_rows = reference.embedding[np.isfinite(reference.embedding).all(axis=1)]
            window_rows = window.embedding[np.isfinite(window.embedding).all(axis=1)]
            if (
                reference_rows.shape[0] < config.min_reference_records
                or window_rows.shape[0] < config.min_records
            ):
                notes.append("embedding not tested: too few complete embeddings")
            else:
                outcome = compare_embeddings(
                    reference_rows,
                    window_rows,
                    n_permutations=config.n_permutations,
                    max_samples=config.mmd_max_samples,
                    seed=config.seed,
                    margin_z=margin_z,
                )
                results.append(("embedding", EMBEDDING_FEATURE, outcome))
    return results


def correct_and_flag(
    tests: list[tuple[str, str, Comparison]], config: DriftConfig
) -> tuple[FeatureResult, ...]:
    """Holm within each family, Bonferroni across the families tested, then flag.

    Args:
        tests: the result of :func:`run_tests`.
        config: ``alpha`` and ``effect_floor``.

    Returns:
        One result per test, in the order of ``tests``.
    """
    families = [family for family in FAMILIES if any(test[0] == family for test in tests)]
    corrected: dict[int, float] = {}
    for family in families:
        members = [index for index, test in enumerate(tests) if test[0] == family]
        adjusted = correct_holm([tests[index][2].p for index in members])
        for index, value in zip(members, adjusted, strict=True):
            corrected[index] = min(1.0, float(value) * len(families))
    return tuple(
        FeatureResult(
            family=family,
            feature=feature,
            test=outcome.test,
            statistic=outcome.statistic,
            p=outcome.p,
            p_corrected=corrected[index],
            effect=outcome.effect,
            effect_lower=outcome.effect_lower,
            flag=bool(
                corrected[index] < config.alpha
                and outcome.effect >= config.effect_floor
                and outcome.effect_lower >= config.effect_floor
            ),
            n_reference=outcome.n_reference,
            n_window=outcome.n_window,
        )
        for index, (family, feature, outcome) in enumerate(tests)
    )

"""Drift of the served model: statistical tests, heuristics and label-free accuracy.

The drift job compares a *window* of inference records (what the served model
saw and answered) with the *reference profile* (the same columns, computed on
the validation split at training time). Everything here works on pandas
DataFrames and numpy; nothing talks to MLflow, the network or the training
data, so the MLflow entry point is a thin wrapper around :func:`compute_drift`.

Record schema (one row per prediction):

- ``predicted_class`` (one of ``CLASS_NAMES``), ``confidence`` (0-1) and the
  four ``prob_<class>`` columns (0-1, summing to 1);
- image statistics ``img_brightness`` (mean luma, 0-255), ``img_contrast``
  (std of luma), ``img_sharpness`` (variance of the Laplacian of luma),
  ``img_mean_r``/``img_mean_g``/``img_mean_b`` (0-255), ``img_width``/``img_height``
  (pixels; not tested by default);
- ``emb_0`` ... ``emb_7``: a reduced penultimate-layer embedding;
- records only: ``request_id``, ``timestamp`` (epoch seconds, UTC),
  ``inference_ms``, ``status`` (``"ok"`` or ``"error"``), ``model_name``,
  ``model_version``; reference (or labelled windows) only: ``label``.

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

import base64
import html
import io
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats
from scipy.spatial.distance import jensenshannon

from eye_model.config import CLASS_NAMES, EMBEDDING_DIMS, PROB_COLUMNS
from eye_model.preprocess import IMAGE_STAT_NAMES

#: Version of the ``drift_report.json`` layout; bump it when a field changes meaning.
SCHEMA_VERSION = 1

#: File names used when a report is written into a folder.
JSON_REPORT_NAME = "drift_report.json"
HTML_REPORT_NAME = "drift_report.html"

#: Families of drift tests, in report order.
FAMILIES: tuple[str, ...] = ("prediction", "output", "image", "embedding")

#: Families whose drift means the *inputs* moved (the accuracy estimate is then unreliable).
INPUT_FAMILIES: tuple[str, ...] = ("image", "embedding")

OUTPUT_FEATURES: tuple[str, ...] = ("confidence", "entropy", *PROB_COLUMNS)
#: The image statistics the serving side computes (one definition, in preprocess).
IMAGE_FEATURES: tuple[str, ...] = IMAGE_STAT_NAMES
EMBEDDING_COLUMNS: tuple[str, ...] = tuple(f"emb_{index}" for index in range(EMBEDDING_DIMS))

#: Name of the single feature of the prediction and embedding families.
PREDICTION_FEATURE = "predicted_class"
EMBEDDING_FEATURE = "emb"

STATUS_OK = "ok"
STATUS_DRIFT = "drift"
STATUS_INSUFFICIENT = "insufficient_data"

_REQUIRED_COLUMNS: tuple[str, ...] = ("predicted_class", "confidence", *PROB_COLUMNS)
_N_CLASSES = len(CLASS_NAMES)


@dataclass(frozen=True)
class DriftConfig:
    """Thresholds and budgets of the drift job.

    Attributes:
        alpha: family-wise significance level (0-1) after Holm and Bonferroni.
        effect_floor: smallest effect counted as drift (see the module docstring for units).
        effect_margin_z: a flag also needs ``effect_lower`` (the effect minus this many
            noise standard deviations of both samples) at or above the floor; 0 gives the
            plain rule "corrected p < alpha and effect >= floor".
        min_records: fewest usable (non-error) window records to run the tests.
        min_reference_records: fewest reference rows to run the tests.
        families: families to test, a subset of ``FAMILIES``.
        output_features: features of the ``output`` family.
        image_features: features of the ``image`` family.
        log_features: features tested as ``log1p(max(x, 0))`` (heavy-tailed).
        embedding_columns: columns forming the embedding vector.
        n_permutations: permutations of the MMD test (p-value resolution 1/(n+1)).
        mmd_max_samples: most rows per side used by the MMD test (seeded subsample).
        n_estimate_draws: simulated label draws behind the accuracy intervals.
        interval_level: coverage of the accuracy intervals (0-1).
        seed: seed of every random choice (subsampling, permutations, draws).
        low_confidence_mean: heuristic threshold on the mean confidence (0-1).
        low_confidence_cutoff: a prediction below this confidence (0-1) is "low".
        low_confidence_ratio: heuristic threshold on the share of low predictions (0-1).
        slow_inference_ms: heuristic threshold on the mean inference time (ms).
        class_dominance: heuristic threshold on the share of the commonest class (0-1).
    """

    alpha: float = 0.05
    effect_floor: float = 0.1
    effect_margin_z: float = 2.0
    min_records: int = 200
    min_reference_records: int = 50
    families: tuple[str, ...] = FAMILIES
    output_features: tuple[str, ...] = OUTPUT_FEATURES
    image_features: tuple[str, ...] = IMAGE_FEATURES
    log_features: tuple[str, ...] = ("img_sharpness",)
    embedding_columns: tuple[str, ...] = EMBEDDING_COLUMNS
    n_permutations: int = 500
    mmd_max_samples: int = 1000
    n_estimate_draws: int = 2000
    interval_level: float = 0.95
    seed: int = 0
    low_confidence_mean: float = 0.60
    low_confidence_cutoff: float = 0.70
    low_confidence_ratio: float = 0.30
    slow_inference_ms: float = 5000.0
    class_dominance: float = 0.80

    def __post_init__(self) -> None:
        """Reject settings that would make the tests meaningless, naming the setting."""
        for name in ("alpha", "interval_level"):
            value = getattr(self, name)
            if not 0.0 < value < 1.0:
                raise ValueError(f"DriftConfig.{name}={value!r} must be between 0 and 1")
        for name in ("effect_floor", "effect_margin_z"):
            if getattr(self, name) < 0:
                raise ValueError(f"DriftConfig.{name}={getattr(self, name)!r} must be >= 0")
        for name in ("min_records", "min_reference_records", "n_permutations", "n_estimate_draws"):
            if getattr(self, name) < 1:
                raise ValueError(f"DriftConfig.{name}={getattr(self, name)!r} must be >= 1")
        if self.mmd_max_samples < 10:
            raise ValueError(f"DriftConfig.mmd_max_samples={self.mmd_max_samples!r} must be >= 10")
        unknown = sorted(set(self.families) - set(FAMILIES))
        if unknown:
            raise ValueError(f"DriftConfig.families has unknown {unknown}; choose from {FAMILIES}")


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
class HeuristicResult:
    """One of the brief's drift heuristics.

    Attributes:
        name: ``low_mean_confidence``, ``high_low_confidence_ratio``, ``slow_inference``
            or ``class_dominance``.
        value: measured value (None when the window lacks the column), in the unit of
            ``threshold``.
        threshold: the value is compared with this (confidence and shares 0-1, time ms).
        flag: True when the value is past the threshold.
        description: what the indicator means, for people reading the report.
    """

    name: str
    value: float | None
    threshold: float
    flag: bool
    description: str


@dataclass(frozen=True)
class PerformanceEstimate:
    """Label-free accuracy estimate (confidence-based, in the style of NannyML CBPE).

    Assumes the probabilities are calibrated on the window. Intervals come from
    drawing labels from the probabilities (the spread of the accuracy the window
    would show if its labels were known).

    Attributes:
        estimated_accuracy: mean probability of the predicted class (0-1).
        estimated_accuracy_interval: (lower, upper) at ``interval_level``.
        estimated_macro_f1: macro-F1 of the expected confusion matrix (0-1).
        estimated_macro_f1_interval: (lower, upper) at ``interval_level``.
        interval_level: coverage of the intervals (0-1).
        reliable: False when input drift was detected or the window is too small.
        n_records: records the estimate is based on.
        true_accuracy: accuracy against known labels, when the window has them.
        true_macro_f1: macro-F1 against known labels, when the window has them.
        n_labelled: records with a known label.
    """

    estimated_accuracy: float
    estimated_accuracy_interval: tuple[float, float]
    estimated_macro_f1: float
    estimated_macro_f1_interval: tuple[float, float]
    interval_level: float
    reliable: bool
    n_records: int
    true_accuracy: float | None = None
    true_macro_f1: float | None = None
    n_labelled: int = 0


@dataclass(frozen=True)
class DriftReport:
    """Everything the drift job found about one window.

    Attributes:
        status: ``ok``, ``drift`` or ``insufficient_data``.
        drift_detected: True when at least one feature is flagged (statistical drift only;
            the heuristics are reported separately and never set it).
        drift_share: flagged features / tested features (0-1).
        n_window: records in the window, errors included.
        n_tested: usable (non-error) window records.
        n_reference: reference rows.
        n_errors: window records with status ``error`` or no prediction.
        error_rate: ``n_errors / n_window`` (0-1).
        recent_avg_confidence: mean confidence of the usable records (0-1, not 0-100).
        recent_low_confidence_ratio: share of usable records below
            ``low_confidence_cutoff`` (0-1).
        features: one result per test run.
        heuristics: the brief's four indicators.
        estimate: label-free accuracy estimate, None when no usable record.
        config: settings used.
        window_start: earliest timestamp of the window (epoch s), if known.
        window_end: latest timestamp of the window (epoch s), if known.
        notes: human-readable remarks (skipped features, why data are insufficient).
    """

    status: str
    drift_detected: bool
    drift_share: float
    n_window: int
    n_tested: int
    n_reference: int
    n_errors: int
    error_rate: float
    recent_avg_confidence: float
    recent_low_confidence_ratio: float
    features: tuple[FeatureResult, ...]
    heuristics: tuple[HeuristicResult, ...]
    estimate: PerformanceEstimate | None
    config: DriftConfig = field(default_factory=DriftConfig)
    window_start: float | None = None
    window_end: float | None = None
    notes: tuple[str, ...] = ()

    @property
    def flagged_features(self) -> tuple[FeatureResult, ...]:
        """Features counted as drifted."""
        return tuple(result for result in self.features if result.flag)

    @property
    def flagged_heuristics(self) -> tuple[HeuristicResult, ...]:
        """Heuristics past their threshold."""
        return tuple(result for result in self.heuristics if result.flag)

    def metrics(self) -> dict[str, float]:
        """MLflow metrics of the report (non-finite values are left out).

        Returns:
            ``drift_detected`` (0/1), ``recent_avg_confidence`` (0-1),
            ``recent_low_confidence_ratio``, ``drift_share``, ``estimated_accuracy``,
            ``estimated_macro_f1`` (with ``_lower``/``_upper``), ``true_accuracy`` and
            ``true_macro_f1`` when labels are known, ``error_rate``, ``n_window``,
            ``n_tested``, ``n_reference``, ``insufficient_data`` (0/1),
            ``drift.<family>.<feature>.p`` (corrected p-value), ``.p_raw``, ``.effect``,
            ``.effect_lower``, ``.flag`` (0/1), ``heuristic.<name>`` (flag 0/1) and
            ``heuristic.<name>.value``.
        """
        values: dict[str, float | None] = {
            "drift_detected": float(self.drift_detected),
            "recent_avg_confidence": self.recent_avg_confidence,
            "recent_low_confidence_ratio": self.recent_low_confidence_ratio,
            "drift_share": self.drift_share,
            "error_rate": self.error_rate,
            "n_window": float(self.n_window),
            "n_tested": float(self.n_tested),
            "n_reference": float(self.n_reference),
            "insufficient_data": float(self.status == STATUS_INSUFFICIENT),
        }
        if self.estimate is not None:
            estimate = self.estimate
            values["estimated_accuracy"] = estimate.estimated_accuracy
            values["estimated_accuracy_lower"] = estimate.estimated_accuracy_interval[0]
            values["estimated_accuracy_upper"] = estimate.estimated_accuracy_interval[1]
            values["estimated_macro_f1"] = estimate.estimated_macro_f1
            values["estimated_macro_f1_lower"] = estimate.estimated_macro_f1_interval[0]
            values["estimated_macro_f1_upper"] = estimate.estimated_macro_f1_interval[1]
            values["estimate_reliable"] = float(estimate.reliable)
            values["true_accuracy"] = estimate.true_accuracy
            values["true_macro_f1"] = estimate.true_macro_f1
        for result in self.features:
            prefix = f"drift.{result.family}.{result.feature}"
            values[f"{prefix}.p"] = result.p_corrected
            values[f"{prefix}.p_raw"] = result.p
            values[f"{prefix}.effect"] = result.effect
            values[f"{prefix}.effect_lower"] = result.effect_lower
            values[f"{prefix}.flag"] = float(result.flag)
        for heuristic in self.heuristics:
            values[f"heuristic.{heuristic.name}"] = float(heuristic.flag)
            values[f"heuristic.{heuristic.name}.value"] = heuristic.value
        return {
            name: float(value)
            for name, value in values.items()
            if value is not None and math.isfinite(value)
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dictionary of the report (``schema_version`` 1; NaN and inf become None)."""
        body = asdict(self)
        body["flagged_features"] = [f"{r.family}.{r.feature}" for r in self.flagged_features]
        body["flagged_heuristics"] = [h.name for h in self.flagged_heuristics]
        return _to_json_safe({"schema_version": SCHEMA_VERSION, **body})

    def write_json(self, path: str | Path) -> Path:
        """Write the report as JSON.

        Args:
            path: a file path, or an existing folder (``drift_report.json`` is written in it).

        Returns:
            The path written.
        """
        target = _resolve_target(path, JSON_REPORT_NAME)
        text = json.dumps(self.to_dict(), indent=2, allow_nan=False)
        target.write_text(text + "\n", encoding="utf-8")
        return target


# ---------------------------------------------------------------------------
# Window selection
# ---------------------------------------------------------------------------


def select_window(
    records: pd.DataFrame, window: int | None = None, since: float | None = None
) -> pd.DataFrame:
    """Select the recent window of inference records.

    Args:
        records: inference records with a ``timestamp`` column (epoch seconds, UTC).
        window: keep the last ``window`` records by timestamp; None or 0 keeps all.
        since: keep only records with ``timestamp >= since`` (epoch seconds); None keeps all.

    Returns:
        The selected records in timestamp order (rows without a timestamp are dropped
        when ``window`` or ``since`` is given). Without a ``timestamp`` column, ``window``
        keeps the last rows in file order.

    Raises:
        ValueError: for a negative window, or ``since`` without a ``timestamp`` column.
    """
    if window is not None and window < 0:
        raise ValueError(f"window={window!r} must be a positive number of records (0 = all)")
    limit = int(window) if window else 0
    if since is None and limit == 0:
        return records
    if "timestamp" not in records.columns:
        if since is not None:
            raise ValueError(
                "since= needs a 'timestamp' column (epoch seconds) in the inference records; "
                "drop since= or log timestamps"
            )
        return records.iloc[-limit:]
    stamps = records["timestamp"].to_numpy(dtype=np.float64, na_value=np.nan)
    keep = np.isfinite(stamps)
    if since is not None:
        keep &= stamps >= float(since)
    rows = np.flatnonzero(keep)
    rows = rows[np.argsort(stamps[rows], kind="stable")]
    if limit:
        rows = rows[-limit:]
    if rows.size and rows[-1] - rows[0] + 1 == rows.size and np.all(np.diff(rows) == 1):
        # Already contiguous and sorted: a slice avoids copying a large frame.
        return records.iloc[int(rows[0]) : int(rows[-1]) + 1]
    return records.iloc[rows]


# ---------------------------------------------------------------------------
# Feature extraction
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Profile:
    """Numeric columns of the usable rows of a frame, ready for the tests."""

    n_rows: int
    n_errors: int
    class_codes: np.ndarray
    probs: np.ndarray
    continuous: dict[str, np.ndarray]
    embedding: np.ndarray | None
    inference_ms: np.ndarray | None
    labels: np.ndarray | None
    timestamps: np.ndarray | None


def _encode_classes(values: pd.Series, *, what: str) -> np.ndarray:
    """Map class names to codes 0-3 (-1 for missing), rejecting unknown names."""
    codes = pd.Index(CLASS_NAMES).get_indexer(values).astype(np.int64)
    unknown = (codes < 0) & values.notna().to_numpy()
    if unknown.any():
        examples = sorted({str(value) for value in values.to_numpy()[unknown][:1000]})[:5]
        raise ValueError(
            f"{what} has class names outside {list(CLASS_NAMES)}: {examples}; "
            "use the model's class names"
        )
    return codes


def _read_column(frame: pd.DataFrame, column: str, rows: np.ndarray | None) -> np.ndarray:
    """One column as float64 (NaN for missing), restricted to ``rows`` when given."""
    values = frame[column].to_numpy(dtype=np.float64, na_value=np.nan)
    return values if rows is None else values[rows]


def _compute_entropy(probs: np.ndarray) -> np.ndarray:
    """Entropy of each row of probabilities, divided by log(number of classes) (0-1)."""
    clipped = np.clip(probs, 0.0, 1.0)
    logs = np.log(np.where(clipped > 0, clipped, 1.0))
    return -(clipped * logs).sum(axis=1) / math.log(probs.shape[1])


def _profile_frame(frame: pd.DataFrame, config: DriftConfig, *, what: str) -> _Profile:
    """Extract the numeric columns of the usable rows once, without copying the frame."""
    missing = [column for column in _REQUIRED_COLUMNS if column not in frame.columns]
    if missing:
        raise ValueError(
            f"{what} lacks the columns {missing}; it must hold the pyfunc output "
            f"(predicted_class, confidence, {', '.join(PROB_COLUMNS)})"
        )
    n_rows = len(frame)
    unusable = frame["predicted_class"].isna().to_numpy()
    if "status" in frame.columns:
        unusable = unusable | frame["status"].eq("error").to_numpy(dtype=bool)
    n_errors = int(unusable.sum())
    rows = None if n_errors == 0 else np.flatnonzero(~unusable)

    codes = _encode_classes(frame["predicted_class"], what=f"{what}.predicted_class")
    codes = codes if rows is None else codes[rows]
    probs = np.column_stack([_read_column(frame, column, rows) for column in PROB_COLUMNS])
    confidence = _read_column(frame, "confidence", rows)
    if confidence.size and np.nanmax(confidence) > 1.0 + 1e-6:
        raise ValueError(
            f"{what}.confidence goes above 1 (max {np.nanmax(confidence):.3g}); "
            "it must be 0-1, divide percentages by 100"
        )

    continuous: dict[str, np.ndarray] = {
        "confidence": confidence,
        "entropy": _compute_entropy(probs),
    }
    for index, column in enumerate(PROB_COLUMNS):
        continuous[column] = probs[:, index]
    for column in config.image_features:
        if column in frame.columns:
            values = _read_column(frame, column, rows)
            if column in config.log_features:
                values = np.log1p(np.maximum(values, 0.0))
            continuous[column] = values

    embedding = None
    if config.embedding_columns and all(c in frame.columns for c in config.embedding_columns):
        embedding = np.column_stack(
            [_read_column(frame, column, rows) for column in config.embedding_columns]
        )
    inference_ms = (
        _read_column(frame, "inference_ms", None) if "inference_ms" in frame.columns else None
    )
    labels = None
    if "label" in frame.columns:
        labels = _encode_classes(frame["label"], what=f"{what}.label")
        labels = labels if rows is None else labels[rows]
    timestamps = _read_column(frame, "timestamp", None) if "timestamp" in frame.columns else None
    return _Profile(
        n_rows=n_rows,
        n_errors=n_errors,
        class_codes=codes,
        probs=probs,
        continuous=continuous,
        embedding=embedding,
        inference_ms=inference_ms,
        labels=labels,
        timestamps=timestamps,
    )


# ---------------------------------------------------------------------------
# Statistical tests
# ---------------------------------------------------------------------------


def _drop_nonfinite(values: np.ndarray) -> np.ndarray:
    """Values without NaN/inf (no copy when all are finite)."""
    finite = np.isfinite(values)
    return values if finite.all() else values[finite]


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


def _run_tests(
    reference: _Profile, window: _Profile, config: DriftConfig, notes: list[str]
) -> list[tuple[str, str, Comparison]]:
    """Run every configured test whose columns both sides have: (family, feature, outcome)."""
    results: list[tuple[str, str, Comparison]] = []
    margin_z = config.effect_margin_z
    if "prediction" in config.families:
        outcome = compare_class_distributions(
            reference.class_codes, window.class_codes, margin_z=margin_z
        )
        results.append(("prediction", PREDICTION_FEATURE, outcome))
    for family, features in (("output", config.output_features), ("image", config.image_features)):
        if family not in config.families:
            continue
        for feature in features:
            if feature not in reference.continuous or feature not in window.continuous:
                notes.append(f"{family}.{feature} not tested: column missing")
                continue
            reference_values = _drop_nonfinite(reference.continuous[feature])
            window_values = _drop_nonfinite(window.continuous[feature])
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


def _correct_and_flag(
    tests: list[tuple[str, str, Comparison]], config: DriftConfig
) -> tuple[FeatureResult, ...]:
    """Holm within each family, Bonferroni across the families tested, then flag."""
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


# ---------------------------------------------------------------------------
# Heuristics
# ---------------------------------------------------------------------------


def compute_heuristics(
    confidence: np.ndarray,
    class_codes: np.ndarray,
    inference_ms: np.ndarray | None,
    config: DriftConfig,
    *,
    enabled: bool = True,
) -> tuple[HeuristicResult, ...]:
    """The brief's four drift indicators.

    Args:
        confidence: confidence (0-1) of the usable records.
        class_codes: predicted class codes 0-3 of the usable records.
        inference_ms: inference time (ms) of every record, errors included; None if unknown.
        config: thresholds.
        enabled: when False (too few records) values are reported but no flag is raised.

    Returns:
        ``low_mean_confidence``, ``high_low_confidence_ratio``, ``slow_inference`` and
        ``class_dominance``.
    """
    finite_confidence = _drop_nonfinite(confidence)
    mean_confidence = float(finite_confidence.mean()) if finite_confidence.size else None
    low_ratio = (
        float(np.mean(finite_confidence < config.low_confidence_cutoff))
        if finite_confidence.size
        else None
    )
    times = None if inference_ms is None else _drop_nonfinite(inference_ms)
    mean_time = float(times.mean()) if times is not None and times.size else None
    dominance = (
        float(np.bincount(class_codes, minlength=_N_CLASSES).max() / class_codes.size)
        if class_codes.size
        else None
    )

    def build(
        name: str, value: float | None, threshold: float, below: bool, description: str
    ) -> HeuristicResult:
        past = value is not None and (value < threshold if below else value > threshold)
        return HeuristicResult(name, value, threshold, bool(enabled and past), description)

    return (
        build(
            "low_mean_confidence",
            mean_confidence,
            config.low_confidence_mean,
            True,
            "mean confidence of the window (0-1) below the threshold",
        ),
        build(
            "high_low_confidence_ratio",
            low_ratio,
            config.low_confidence_ratio,
            False,
            f"share of predictions with confidence below {config.low_confidence_cutoff:g} "
            "above the threshold",
        ),
        build(
            "slow_inference",
            mean_time,
            config.slow_inference_ms,
            False,
            "mean inference time (ms) above the threshold",
        ),
        build(
            "class_dominance",
            dominance,
            config.class_dominance,
            False,
            "share of the commonest predicted class above the threshold",
        ),
    )


# ---------------------------------------------------------------------------
# Label-free performance estimate
# ---------------------------------------------------------------------------


def _compute_macro_f1(
    true_positive: np.ndarray, false_positive: np.ndarray, false_negative: np.ndarray
) -> np.ndarray:
    """Macro-F1 over the last axis; classes never predicted nor present are left out."""
    denominator = 2.0 * true_positive + false_positive + false_negative
    present = denominator > 0
    scores = np.divide(
        2.0 * true_positive, denominator, out=np.zeros_like(denominator), where=present
    )
    counted = present.sum(axis=-1)
    return np.divide(
        scores.sum(axis=-1),
        counted,
        out=np.full(np.shape(counted), np.nan),
        where=counted > 0,
    )


def estimate_performance(
    probs: np.ndarray,
    class_codes: np.ndarray,
    *,
    labels: np.ndarray | None = None,
    reliable: bool = True,
    n_draws: int = 2000,
    interval_level: float = 0.95,
    seed: int = 0,
) -> PerformanceEstimate:
    """Estimate accuracy and macro-F1 without labels (confidence-based, as NannyML CBPE).

    Expected confusion counts from the probabilities: for class k,
    ``TP_k = sum p_k`` over rows predicted k, ``FP_k = sum (1 - p_k)`` over rows
    predicted k, ``FN_k = sum p_k`` over rows not predicted k. The intervals are
    the spread of accuracy and macro-F1 when labels are drawn from the
    probabilities: the counts are sums of independent categorical draws, so
    their mean and covariance are exact and the draws use a multivariate
    normal (O(rows) work, no loop over rows).

    Args:
        probs: class probabilities, shape (n, 4), rows summing to 1.
        class_codes: predicted class codes 0-3, shape (n,).
        labels: true class codes (-1 when unknown), shape (n,), or None.
        reliable: False when input drift makes the probabilities untrustworthy.
        n_draws: simulated label draws behind the intervals.
        interval_level: coverage of the intervals (0-1).
        seed: seed of the draws.

    Returns:
        The estimate, with the true accuracy and macro-F1 when labels are known.
    """
    finite = np.isfinite(probs).all(axis=1)
    if not finite.all():
        probs, class_codes = probs[finite], class_codes[finite]
        labels = None if labels is None else labels[finite]
    count = class_codes.size
    if count == 0:
        nan_pair = (math.nan, math.nan)
        return PerformanceEstimate(math.nan, nan_pair, math.nan, nan_pair, interval_level, False, 0)
    probs = probs / probs.sum(axis=1, keepdims=True)
    predicted_counts = np.bincount(class_codes, minlength=_N_CLASSES).astype(np.float64)

    # Per predicted class j: s_j = sum of p (by label class), S_j = sum of p p^T.
    mean = np.zeros(2 * _N_CLASSES)  # [TP_0..TP_3, FN_0..FN_3]
    covariance = np.zeros((2 * _N_CLASSES, 2 * _N_CLASSES))
    order = np.argsort(class_codes, kind="stable")
    bounds = np.searchsorted(class_codes[order], np.arange(_N_CLASSES + 1))
    for predicted in range(_N_CLASSES):
        group = probs[order[bounds[predicted] : bounds[predicted + 1]]]
        sums = group.sum(axis=0)
        # A label equal to the prediction is a TP of that class, any other label k an FN of k.
        slots = np.array([k if k == predicted else _N_CLASSES + k for k in range(_N_CLASSES)])
        mean[slots] += sums
        covariance[np.ix_(slots, slots)] += np.diag(sums) - group.T @ group

    true_positive = mean[:_N_CLASSES]
    false_negative = mean[_N_CLASSES:]
    expected_accuracy = float(true_positive.sum() / count)
    expected_f1 = float(
        _compute_macro_f1(true_positive, predicted_counts - true_positive, false_negative)
    )

    rng = np.random.default_rng(seed)
    eigenvalues, eigenvectors = np.linalg.eigh(covariance)
    root = eigenvectors * np.sqrt(np.clip(eigenvalues, 0.0, None))
    draws = mean + rng.standard_normal((n_draws, mean.size)) @ root.T
    drawn_tp = np.clip(draws[:, :_N_CLASSES], 0.0, predicted_counts)
    drawn_fn = np.clip(draws[:, _N_CLASSES:], 0.0, None)
    drawn_accuracy = drawn_tp.sum(axis=1) / count
    drawn_f1 = _compute_macro_f1(drawn_tp, predicted_counts - drawn_tp, drawn_fn)
    tail = (1.0 - interval_level) / 2.0 * 100.0
    accuracy_interval = np.percentile(drawn_accuracy, [tail, 100.0 - tail])
    f1_interval = np.nanpercentile(drawn_f1, [tail, 100.0 - tail])

    true_accuracy = true_f1 = None
    n_labelled = 0
    if labels is not None:
        known = labels >= 0
        n_labelled = int(known.sum())
        if n_labelled:
            true_accuracy, true_f1 = compute_classification_scores(
                labels[known], class_codes[known]
            )
    return PerformanceEstimate(
        estimated_accuracy=expected_accuracy,
        estimated_accuracy_interval=(float(accuracy_interval[0]), float(accuracy_interval[1])),
        estimated_macro_f1=expected_f1,
        estimated_macro_f1_interval=(float(f1_interval[0]), float(f1_interval[1])),
        interval_level=interval_level,
        reliable=reliable,
        n_records=count,
        true_accuracy=true_accuracy,
        true_macro_f1=true_f1,
        n_labelled=n_labelled,
    )


def compute_classification_scores(labels: np.ndarray, predicted: np.ndarray) -> tuple[float, float]:
    """Accuracy and macro-F1 of predictions against true labels.

    Args:
        labels: true class codes 0-3.
        predicted: predicted class codes 0-3.

    Returns:
        (accuracy 0-1, macro-F1 0-1 over the classes predicted or present).
    """
    hits = labels == predicted
    true_positive = np.bincount(predicted[hits], minlength=_N_CLASSES).astype(np.float64)
    predicted_counts = np.bincount(predicted, minlength=_N_CLASSES)
    label_counts = np.bincount(labels, minlength=_N_CLASSES)
    macro_f1 = _compute_macro_f1(
        true_positive, predicted_counts - true_positive, label_counts - true_positive
    )
    return float(hits.mean()), float(macro_f1)


# ---------------------------------------------------------------------------
# The drift job's core
# ---------------------------------------------------------------------------


def compute_drift(
    reference: pd.DataFrame,
    window: pd.DataFrame,
    config: DriftConfig | None = None,
    *,
    labels: Sequence[str] | pd.Series | None = None,
) -> DriftReport:
    """Compare a window of inference records with the reference profile.

    Args:
        reference: reference profile (validation split at training), record schema.
        window: inference records (see :func:`select_window`); rows with status
            ``error`` (or no prediction) are counted but left out of the tests.
        config: thresholds and budgets; ``DriftConfig()`` when None.
        labels: true class names for the window rows (same order, None/NaN when
            unknown); overrides a ``label`` column of the window.

    Returns:
        The drift report. ``insufficient_data`` when the window has fewer than
        ``min_records`` usable records (or the reference fewer than
        ``min_reference_records``): no test is run and nothing is flagged (the
        heuristics report their values without flags). ``drift_detected`` reflects
        the statistical tests only; the heuristics are separate indicators.

    Raises:
        ValueError: when a frame lacks the prediction columns, has unknown class
            names or confidences above 1, or ``labels`` has the wrong length.
    """
    config = config if config is not None else DriftConfig()
    if labels is not None:
        if len(labels) != len(window):
            raise ValueError(
                f"labels has {len(labels)} values but the window has {len(window)} records; "
                "pass one label (or None) per record"
            )
        window = window.assign(label=np.asarray(labels, dtype=object))
    notes: list[str] = []
    reference_profile = _profile_frame(reference, config, what="reference")
    window_profile = _profile_frame(window, config, what="window")
    n_tested = window_profile.class_codes.size
    n_reference = reference_profile.class_codes.size

    enough = n_tested >= config.min_records and n_reference >= config.min_reference_records
    if n_tested < config.min_records:
        notes.append(
            f"window has {n_tested} usable records, fewer than min_records={config.min_records}"
        )
    if n_reference < config.min_reference_records:
        notes.append(
            f"reference has {n_reference} rows, fewer than "
            f"min_reference_records={config.min_reference_records}"
        )
    features: tuple[FeatureResult, ...] = ()
    if enough:
        features = _correct_and_flag(
            _run_tests(reference_profile, window_profile, config, notes), config
        )
    flagged = [result for result in features if result.flag]
    drift_detected = bool(flagged)
    input_drift = any(result.family in INPUT_FAMILIES for result in flagged)

    confidence = window_profile.continuous["confidence"]
    heuristics = compute_heuristics(
        confidence,
        window_profile.class_codes,
        window_profile.inference_ms,
        config,
        enabled=enough,
    )
    finite_confidence = _drop_nonfinite(confidence)
    estimate = None
    if n_tested:
        estimate = estimate_performance(
            window_profile.probs,
            window_profile.class_codes,
            labels=window_profile.labels,
            reliable=enough and not input_drift,
            n_draws=config.n_estimate_draws,
            interval_level=config.interval_level,
            seed=config.seed,
        )
        if input_drift:
            notes.append("accuracy estimate unreliable: input (image or embedding) drift")

    stamps = window_profile.timestamps
    finite_stamps = None if stamps is None else _drop_nonfinite(stamps)
    has_stamps = finite_stamps is not None and finite_stamps.size > 0
    if not enough:
        status = STATUS_INSUFFICIENT
    else:
        status = STATUS_DRIFT if drift_detected else STATUS_OK
    return DriftReport(
        status=status,
        drift_detected=drift_detected,
        drift_share=len(flagged) / len(features) if features else 0.0,
        n_window=window_profile.n_rows,
        n_tested=n_tested,
        n_reference=n_reference,
        n_errors=window_profile.n_errors,
        error_rate=window_profile.n_errors / window_profile.n_rows
        if window_profile.n_rows
        else 0.0,
        recent_avg_confidence=(
            float(finite_confidence.mean()) if finite_confidence.size else math.nan
        ),
        recent_low_confidence_ratio=(
            float(np.mean(finite_confidence < config.low_confidence_cutoff))
            if finite_confidence.size
            else math.nan
        ),
        features=features,
        heuristics=heuristics,
        estimate=estimate,
        config=config,
        window_start=float(finite_stamps.min()) if has_stamps else None,
        window_end=float(finite_stamps.max()) if has_stamps else None,
        notes=tuple(notes),
    )


# ---------------------------------------------------------------------------
# Reports
# ---------------------------------------------------------------------------


def _to_json_safe(value: Any) -> Any:
    """Recursively convert to JSON types; NaN and infinities become None."""
    if isinstance(value, Mapping):
        return {str(key): _to_json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_json_safe(item) for item in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        number = float(value)
        return number if math.isfinite(number) else None
    if value is None or isinstance(value, str):
        return value
    return str(value)


def _resolve_target(path: str | Path, default_name: str) -> Path:
    """The file to write: ``path`` itself, or ``default_name`` inside an existing folder."""
    target = Path(path)
    if target.is_dir():
        target = target / default_name
    target.parent.mkdir(parents=True, exist_ok=True)
    return target


def _render_png(figure: Any) -> str:
    """Base64 text of a matplotlib figure saved as PNG."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=80)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _plot_class_distribution(reference: _Profile, window: _Profile, title: str) -> str:
    """Bars of the predicted-class shares, reference vs window (base64 PNG)."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.5, 3.2))
    figure.subplots_adjust(left=0.1, right=0.97, bottom=0.1, top=0.88)
    axes = figure.subplots()
    positions = np.arange(_N_CLASSES)
    for offset, (name, profile) in ((-0.2, ("reference", reference)), (0.2, ("window", window))):
        counts = np.bincount(profile.class_codes, minlength=_N_CLASSES)
        shares = counts / max(counts.sum(), 1)
        axes.bar(positions + offset, shares, width=0.4, label=name)
    axes.set_xticks(positions, CLASS_NAMES, fontsize=8)
    axes.set_ylabel("share of predictions")
    axes.set_ylim(0.0, min(1.0, axes.get_ylim()[1] * 1.25))
    axes.legend(ncols=2, loc="upper center")
    axes.set_title(title, fontsize=9)
    return _render_png(figure)


def _plot_histograms(panels: Sequence[tuple[str, np.ndarray, np.ndarray, str]], title: str) -> str:
    """Grid of reference vs window density histograms (base64 PNG).

    Args:
        panels: (name, reference values, window values, caption) per panel.
        title: title of the figure.
    """
    from matplotlib.figure import Figure

    columns = 3
    rows = max(1, math.ceil(len(panels) / columns))
    # Fixed margins: constrained layout costs more than the drawing itself.
    height = 0.6 + 2.8 * rows  # inches: title band plus one 2.8-inch row per row of panels
    figure = Figure(figsize=(4.0 * columns, height))
    figure.subplots_adjust(
        left=0.05, right=0.98, bottom=0.35 / height, top=1.0 - 0.9 / height, wspace=0.25, hspace=0.6
    )
    grid = figure.subplots(rows, columns, squeeze=False)
    for axes in grid.ravel()[len(panels) :]:
        axes.set_visible(False)
    for axes, (name, reference_values, window_values, caption) in zip(
        grid.ravel(), panels, strict=False
    ):
        reference_values = _drop_nonfinite(reference_values)
        window_values = _drop_nonfinite(window_values)
        both = np.concatenate([reference_values[:1], window_values[:1]])
        if both.size == 0:
            axes.set_title(f"{name}: no data", fontsize=9)
            continue
        low = min(
            np.percentile(reference_values, 0.5) if reference_values.size else both.min(),
            np.percentile(window_values, 0.5) if window_values.size else both.min(),
        )
        high = max(
            np.percentile(reference_values, 99.5) if reference_values.size else both.max(),
            np.percentile(window_values, 99.5) if window_values.size else both.max(),
        )
        if not high > low:
            low, high = low - 0.5, high + 0.5
        edges = np.linspace(low, high, 41)
        for label, values in (("reference", reference_values), ("window", window_values)):
            if values.size:
                density, _ = np.histogram(values, bins=edges, density=True)
                axes.stairs(density, edges, label=label, fill=label == "reference", alpha=0.5)
        axes.set_title(f"{name}\n{caption}", fontsize=8)
        axes.tick_params(labelsize=7)
    grid.ravel()[0].legend(fontsize=7)
    figure.suptitle(title)
    return _render_png(figure)


def _format_number(value: float | None, digits: int = 3) -> str:
    """A number for the HTML tables ("-" for missing)."""
    if value is None or not math.isfinite(value):
        return "-"
    if value != 0 and abs(value) < 10 ** (-digits):
        return f"{value:.2e}"
    return f"{value:.{digits}f}"


def write_html_report(
    report: DriftReport, reference: pd.DataFrame, window: pd.DataFrame, path: str | Path
) -> Path:
    """Write a self-contained HTML drift report (plots embedded as base64 PNG).

    Args:
        report: the result of :func:`compute_drift` on ``reference`` and ``window``.
        reference: the reference profile.
        window: the window the report was computed on.
        path: a file path, or an existing folder (``drift_report.html`` is written in it).

    Returns:
        The path written.
    """
    config = report.config
    reference_profile = _profile_frame(reference, config, what="reference")
    window_profile = _profile_frame(window, config, what="window")
    by_feature = {(r.family, r.feature): r for r in report.features}

    def caption(family: str, feature: str) -> str:
        result = by_feature.get((family, feature))
        if result is None:
            return "not tested"
        mark = "DRIFT " if result.flag else ""
        return (
            f"{mark}p={_format_number(result.p_corrected)} effect={_format_number(result.effect)}"
        )

    images: list[tuple[str, str]] = [
        (
            "Predicted classes",
            _plot_class_distribution(
                reference_profile, window_profile, caption("prediction", PREDICTION_FEATURE)
            ),
        )
    ]
    for family, features in (("output", config.output_features), ("image", config.image_features)):
        panels = [
            (
                feature + (" (log1p)" if feature in config.log_features else ""),
                reference_profile.continuous[feature],
                window_profile.continuous[feature],
                caption(family, feature),
            )
            for feature in features
            if feature in reference_profile.continuous and feature in window_profile.continuous
        ]
        if panels:
            images.append((f"{family} features", _plot_histograms(panels, family)))
    if reference_profile.embedding is not None and window_profile.embedding is not None:
        panels = [
            (
                column,
                reference_profile.embedding[:, index],
                window_profile.embedding[:, index],
                "marginal",
            )
            for index, column in enumerate(config.embedding_columns)
        ]
        title = f"embedding ({caption('embedding', EMBEDDING_FEATURE)})"
        images.append(("Embedding marginals", _plot_histograms(panels, title)))

    escape = html.escape
    feature_rows = "\n".join(
        f"<tr class='{'flag' if r.flag else ''}'><td>{escape(r.family)}</td>"
        f"<td>{escape(r.feature)}</td><td>{escape(r.test)}</td>"
        f"<td>{_format_number(r.statistic)}</td><td>{_format_number(r.p)}</td>"
        f"<td>{_format_number(r.p_corrected)}</td><td>{_format_number(r.effect)}</td>"
        f"<td>{_format_number(r.effect_lower)}</td>"
        f"<td>{'yes' if r.flag else 'no'}</td><td>{r.n_reference}</td><td>{r.n_window}</td></tr>"
        for r in report.features
    )
    heuristic_rows = "\n".join(
        f"<tr class='{'flag' if h.flag else ''}'><td>{escape(h.name)}</td>"
        f"<td>{_format_number(h.value)}</td><td>{_format_number(h.threshold)}</td>"
        f"<td>{'yes' if h.flag else 'no'}</td><td>{escape(h.description)}</td></tr>"
        for h in report.heuristics
    )
    estimate = report.estimate
    estimate_html = "<p>No usable records.</p>"
    if estimate is not None:
        accuracy_low, accuracy_high = estimate.estimated_accuracy_interval
        f1_low, f1_high = estimate.estimated_macro_f1_interval
        estimate_html = (
            "<table><tr><th>metric</th><th>estimate</th>"
            f"<th>{estimate.interval_level:.0%} interval</th><th>true (labels)</th></tr>"
            f"<tr><td>accuracy</td><td>{_format_number(estimate.estimated_accuracy)}</td>"
            f"<td>{_format_number(accuracy_low)} - {_format_number(accuracy_high)}</td>"
            f"<td>{_format_number(estimate.true_accuracy)}</td></tr>"
            f"<tr><td>macro-F1</td><td>{_format_number(estimate.estimated_macro_f1)}</td>"
            f"<td>{_format_number(f1_low)} - {_format_number(f1_high)}</td>"
            f"<td>{_format_number(estimate.true_macro_f1)}</td></tr></table>"
            f"<p>Reliable: {'yes' if estimate.reliable else 'no'}"
            f" ({estimate.n_records} records, {estimate.n_labelled} labelled).</p>"
        )
    notes_html = "".join(f"<li>{escape(note)}</li>" for note in report.notes) or "<li>none</li>"
    figures_html = "\n".join(
        f"<h3>{escape(name)}</h3><img alt='{escape(name)}' src='data:image/png;base64,{data}'>"
        for name, data in images
    )
    document = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Drift report</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; color: #222; }}
table {{ border-collapse: collapse; margin-bottom: 1em; }}
td, th {{ border: 1px solid #bbb; padding: 3px 8px; font-size: 13px; text-align: left; }}
tr.flag td {{ background: #fbd5d5; }}
.status {{ font-size: 1.3em; font-weight: bold; }}
img {{ max-width: 100%; }}
</style></head><body>
<h1>Drift report</h1>
<p class="status">Status: {escape(report.status)}
 &mdash; drift detected: {"yes" if report.drift_detected else "no"}</p>
<table>
<tr><td>window records (usable / all)</td><td>{report.n_tested} / {report.n_window}</td></tr>
<tr><td>reference rows</td><td>{report.n_reference}</td></tr>
<tr><td>errors (rate)</td><td>{report.n_errors} ({_format_number(report.error_rate)})</td></tr>
<tr><td>drift share</td><td>{_format_number(report.drift_share)}</td></tr>
<tr><td>mean confidence (0-1)</td><td>{_format_number(report.recent_avg_confidence)}</td></tr>
<tr><td>low-confidence share</td><td>{_format_number(report.recent_low_confidence_ratio)}</td></tr>
<tr><td>alpha / effect floor</td><td>{config.alpha:g} / {config.effect_floor:g}</td></tr>
</table>
<h2>Statistical tests</h2>
<p>A feature drifts when its corrected p (Holm within family, Bonferroni across families)
is below alpha and its effect, even minus {config.effect_margin_z:g} sd of sampling noise,
is at least the floor.</p>
<table><tr><th>family</th><th>feature</th><th>test</th><th>statistic</th><th>p</th>
<th>p corrected</th><th>effect</th><th>effect minus noise</th><th>drift</th><th>n ref</th>
<th>n window</th></tr>
{feature_rows}
</table>
<h2>Heuristics</h2>
<table><tr><th>indicator</th><th>value</th><th>threshold</th><th>flag</th><th>meaning</th></tr>
{heuristic_rows}
</table>
<h2>Label-free performance estimate</h2>
{estimate_html}
<h2>Notes</h2><ul>{notes_html}</ul>
<h2>Distributions</h2>
{figures_html}
</body></html>
"""
    target = _resolve_target(path, HTML_REPORT_NAME)
    target.write_text(document, encoding="utf-8")
    return target


# ---------------------------------------------------------------------------
# Synthetic records (tests, benchmarks, validation harness)
# ---------------------------------------------------------------------------


def simulate_records(
    n_records: int,
    *,
    seed: int = 0,
    class_prior: Sequence[float] | None = None,
    brightness_scale: float = 1.0,
    sharpness_scale: float = 1.0,
    rgb_scale: tuple[float, float, float] = (1.0, 1.0, 1.0),
    embedding_shift: float = 0.0,
    error_rate: float = 0.0,
    as_reference: bool = False,
    with_labels: bool = False,
    start_time: float = 1_700_000_000.0,
) -> pd.DataFrame:
    """Synthetic records in the record schema, with calibrated probabilities.

    Each row has a latent class (drawn from ``class_prior``) that drives the
    logits, image statistics and embedding; labels (``with_labels``) are drawn
    from the probabilities, so the probabilities are calibrated by construction.

    Args:
        n_records: rows to generate.
        seed: random seed.
        class_prior: latent class shares in ``CLASS_NAMES`` order (uniform when None).
        brightness_scale: multiplies brightness and the RGB means (planted drift).
        sharpness_scale: multiplies the sharpness (below 1 mimics blur).
        rgb_scale: multiplies each RGB mean (colour cast).
        embedding_shift: added to every embedding coordinate (in embedding sd).
        error_rate: share of rows with status ``error`` (no prediction), records only.
        as_reference: reference profile layout (no request/timing/status columns).
        with_labels: add a ``label`` column drawn from the probabilities.
        start_time: timestamp of the first record (epoch s).

    Returns:
        The DataFrame.
    """
    rng = np.random.default_rng(seed)
    prior = (
        np.full(_N_CLASSES, 1.0 / _N_CLASSES)
        if class_prior is None
        else np.asarray(class_prior, dtype=np.float64)
    )
    prior = prior / prior.sum()
    latent = rng.choice(_N_CLASSES, size=n_records, p=prior)
    logits = rng.normal(0.0, 1.0, size=(n_records, _N_CLASSES))
    logits[np.arange(n_records), latent] += 3.5
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    predicted = probs.argmax(axis=1)
    class_names = np.asarray(CLASS_NAMES, dtype=object)

    brightness_mean = np.array([110.0, 85.0, 90.0, 95.0])[latent]
    brightness = np.clip(rng.normal(brightness_mean, 15.0) * brightness_scale, 0.0, 255.0)
    contrast = np.clip(rng.normal(np.array([35.0, 48.0, 45.0, 44.0])[latent], 8.0), 0.0, None)
    sharpness = np.exp(rng.normal(np.array([3.5, 5.0, 4.6, 4.8])[latent], 0.6)) * sharpness_scale
    colour = np.array([1.55, 0.85, 0.35]) * np.asarray(rgb_scale, dtype=np.float64)
    frame: dict[str, Any] = {
        "predicted_class": class_names[predicted],
        "confidence": probs.max(axis=1),
    }
    for index, column in enumerate(PROB_COLUMNS):
        frame[column] = probs[:, index]
    frame["img_brightness"] = brightness
    frame["img_contrast"] = contrast
    frame["img_sharpness"] = sharpness
    for index, column in enumerate(("img_mean_r", "img_mean_g", "img_mean_b")):
        frame[column] = np.clip(
            brightness * colour[index] + rng.normal(0.0, 5.0, n_records), 0, 255
        )
    sizes = np.array([512, 1024, 2048])
    frame["img_width"] = sizes[rng.integers(0, sizes.size, n_records)]
    frame["img_height"] = frame["img_width"]
    centres = np.random.default_rng(12345).normal(0.0, 1.0, size=(_N_CLASSES, 8))
    embedding = centres[latent] + rng.normal(0.0, 1.0, size=(n_records, 8)) + embedding_shift
    for index in range(8):
        frame[f"emb_{index}"] = embedding[:, index]
    if with_labels:
        cumulative = np.cumsum(probs, axis=1)[:, :-1]
        frame["label"] = class_names[(rng.random(n_records)[:, None] > cumulative).sum(axis=1)]
    records = pd.DataFrame(frame)
    if as_reference:
        return records
    records.insert(0, "request_id", pd.RangeIndex(n_records).astype(str))
    records.insert(1, "timestamp", start_time + np.cumsum(rng.exponential(1.0, n_records)))
    records.insert(2, "inference_ms", rng.lognormal(math.log(120.0), 0.3, n_records))
    failed = rng.random(n_records) < error_rate
    records.insert(3, "status", np.where(failed, "error", "ok").astype(object))
    records["model_name"] = "eye-disease-model"
    records["model_version"] = "1"
    if failed.any():
        records.loc[failed, "predicted_class"] = None
        records.loc[failed, ["confidence", *PROB_COLUMNS]] = np.nan
    return records

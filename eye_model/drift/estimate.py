"""Label-free accuracy estimate of the window (confidence-based, in the style of NannyML CBPE).

When the probabilities are calibrated, the expected accuracy of a window is the mean
probability of the predicted class, and the expected confusion matrix gives a macro-F1;
no label is needed. The estimate is trusted only while the inputs have not drifted (the
drift job marks it unreliable otherwise). :func:`compute_classification_scores` gives the
true figures when labels are known.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from eye_model.config import CLASS_NAMES

_N_CLASSES = len(CLASS_NAMES)


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

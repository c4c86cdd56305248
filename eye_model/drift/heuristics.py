"""The brief's four drift heuristics and the recent-window metrics of every run that logs them.

Serving runs (telemetry, last ``Settings.window_size`` predictions) and drift runs (the
drift job's window) both log the metric names below, and a name has one unit and one
meaning wherever it appears. :func:`compute_heuristics` holds the one copy of each
threshold (both sides call it); :func:`compute_recent_metrics` turns its result into the
metrics (drift runs use it; serving runs can, instead of their own arithmetic):

- ``recent_avg_confidence``: mean confidence of the scored predictions, **0-100**
  (like ``prediction_confidence`` and ``session_avg_confidence``);
- ``recent_low_confidence_ratio``: share (0-1) of scored predictions below
  :data:`LOW_CONFIDENCE_CUTOFF`;
- ``recent_avg_inference_time_ms``: mean inference time (ms), errors included;
- ``drift_detected``: 0/1, any of the four heuristics fired on the window;
- ``recent_<heuristic>``: 0/1 per heuristic;
- ``error_count`` and ``error_rate`` (0-1): failed predictions in the window.

This module imports nothing else of the drift package (and nothing of telemetry).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from eye_model.config import CLASS_NAMES

#: Heuristic: mean confidence (0-1) of the window below this.
LOW_CONFIDENCE_MEAN = 0.60
#: A prediction whose confidence (0-1) is below this is "low".
LOW_CONFIDENCE_CUTOFF = 0.70
#: Heuristic: share (0-1) of low-confidence predictions above this.
LOW_CONFIDENCE_RATIO = 0.30
#: Heuristic: mean inference time (ms) above this.
SLOW_INFERENCE_MS = 5000.0
#: Heuristic: share (0-1) of the commonest predicted class above this.
CLASS_DOMINANCE = 0.80

#: Names of the four heuristics, in report order.
HEURISTIC_NAMES: tuple[str, ...] = (
    "low_mean_confidence",
    "high_low_confidence_ratio",
    "slow_inference",
    "class_dominance",
)

_N_CLASSES = len(CLASS_NAMES)


class HeuristicThresholds(Protocol):
    """What :func:`compute_heuristics` reads (``DriftConfig`` has these attributes)."""

    @property
    def low_confidence_mean(self) -> float:
        """Threshold on the mean confidence (0-1)."""
        ...

    @property
    def low_confidence_cutoff(self) -> float:
        """A prediction below this confidence (0-1) is low."""
        ...

    @property
    def low_confidence_ratio(self) -> float:
        """Threshold on the share of low predictions (0-1)."""
        ...

    @property
    def slow_inference_ms(self) -> float:
        """Threshold on the mean inference time (ms)."""
        ...

    @property
    def class_dominance(self) -> float:
        """Threshold on the share of the commonest class (0-1)."""
        ...


@dataclass(frozen=True)
class BriefThresholds:
    """The brief's thresholds (the module constants), for callers without a ``DriftConfig``."""

    low_confidence_mean: float = LOW_CONFIDENCE_MEAN
    low_confidence_cutoff: float = LOW_CONFIDENCE_CUTOFF
    low_confidence_ratio: float = LOW_CONFIDENCE_RATIO
    slow_inference_ms: float = SLOW_INFERENCE_MS
    class_dominance: float = CLASS_DOMINANCE


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


def drop_nonfinite(values: np.ndarray) -> np.ndarray:
    """Values without NaN/inf (no copy when all are finite)."""
    finite = np.isfinite(values)
    return values if finite.all() else values[finite]


def compute_heuristics(
    confidence: np.ndarray,
    class_codes: np.ndarray,
    inference_ms: np.ndarray | None,
    config: HeuristicThresholds | None = None,
    *,
    enabled: bool = True,
) -> tuple[HeuristicResult, ...]:
    """The brief's four drift indicators.

    Args:
        confidence: confidence (0-1) of the usable records.
        class_codes: predicted class codes 0-3 of the usable records.
        inference_ms: inference time (ms) of every record, errors included; None if unknown.
        config: thresholds (a ``DriftConfig``); the brief's when None.
        enabled: when False (too few records) values are reported but no flag is raised.

    Returns:
        ``low_mean_confidence``, ``high_low_confidence_ratio``, ``slow_inference`` and
        ``class_dominance``.
    """
    limits: HeuristicThresholds = config if config is not None else BriefThresholds()
    finite_confidence = drop_nonfinite(confidence)
    mean_confidence = float(finite_confidence.mean()) if finite_confidence.size else None
    low_ratio = (
        float(np.mean(finite_confidence < limits.low_confidence_cutoff))
        if finite_confidence.size
        else None
    )
    times = None if inference_ms is None else drop_nonfinite(inference_ms)
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
            limits.low_confidence_mean,
            True,
            "mean confidence of the window (0-1) below the threshold",
        ),
        build(
            "high_low_confidence_ratio",
            low_ratio,
            limits.low_confidence_ratio,
            False,
            f"share of predictions with confidence below {limits.low_confidence_cutoff:g} "
            "above the threshold",
        ),
        build(
            "slow_inference",
            mean_time,
            limits.slow_inference_ms,
            False,
            "mean inference time (ms) above the threshold",
        ),
        build(
            "class_dominance",
            dominance,
            limits.class_dominance,
            False,
            "share of the commonest predicted class above the threshold",
        ),
    )


def compute_recent_metrics(
    heuristics: tuple[HeuristicResult, ...], *, n_records: int, n_errors: int
) -> dict[str, float]:
    """The recent-window metrics shared by serving runs and drift runs (see the module doc).

    Args:
        heuristics: the result of :func:`compute_heuristics` on the window.
        n_records: records in the window, errors included.
        n_errors: failed predictions in the window.

    Returns:
        ``recent_avg_confidence`` (0-100), ``recent_low_confidence_ratio`` (0-1),
        ``recent_avg_inference_time_ms`` (ms), ``drift_detected`` (0/1: any heuristic
        fired), ``recent_<heuristic>`` (0/1), ``error_count`` and ``error_rate`` (0-1).
        A value the window cannot give (no scored prediction, no timing) is left out.
    """
    by_name = {heuristic.name: heuristic for heuristic in heuristics}
    values: dict[str, float | None] = {}
    mean_confidence = by_name["low_mean_confidence"].value
    values["recent_avg_confidence"] = None if mean_confidence is None else 100.0 * mean_confidence
    values["recent_low_confidence_ratio"] = by_name["high_low_confidence_ratio"].value
    values["recent_avg_inference_time_ms"] = by_name["slow_inference"].value
    values["drift_detected"] = float(any(heuristic.flag for heuristic in heuristics))
    for heuristic in heuristics:
        values[f"recent_{heuristic.name}"] = float(heuristic.flag)
    values["error_count"] = float(n_errors)
    values["error_rate"] = n_errors / n_records if n_records else 0.0
    return {name: float(value) for name, value in values.items() if value is not None}

"""The drift job's core: :func:`compute_drift` compares one window with the reference profile.

It works on pandas DataFrames and numpy only (no MLflow, network or training data):
records → arrays (:mod:`~eye_model.drift.features`) → statistical tests
(:mod:`~eye_model.drift.stats`), the brief's heuristics
(:mod:`~eye_model.drift.heuristics`) and the label-free estimate
(:mod:`~eye_model.drift.estimate`) → :class:`~eye_model.drift.report.DriftReport`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from eye_model.drift.config import INPUT_FAMILIES, DriftConfig
from eye_model.drift.estimate import PerformanceEstimate, estimate_performance
from eye_model.drift.features import extract_arrays
from eye_model.drift.heuristics import compute_heuristics, compute_recent_metrics, drop_nonfinite
from eye_model.drift.report import (
    STATUS_DRIFT,
    STATUS_INSUFFICIENT,
    STATUS_OK,
    DriftReport,
)
from eye_model.drift.stats import FeatureResult, correct_and_flag, run_tests


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
        window: inference records (see :func:`eye_model.drift.window.select_window`); rows
            with status ``error`` (or no prediction) are counted but left out of the tests.
        config: thresholds and budgets; ``DriftConfig()`` when None.
        labels: true class names for the window rows (same order, None/NaN when
            unknown); overrides a ``label`` column of the window.

    Returns:
        The drift report. ``insufficient_data`` when the window has fewer than
        ``min_records`` usable records (or the reference fewer than
        ``min_reference_records``): no test is run and nothing is flagged (the
        heuristics report their values without flags). ``drift_test_detected`` reflects
        the statistical tests, ``drift_detected`` the brief's heuristics.

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
    reference_arrays = extract_arrays(reference, config, what="reference")
    window_arrays = extract_arrays(window, config, what="window")
    n_tested = window_arrays.class_codes.size
    n_reference = reference_arrays.class_codes.size

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
        features = correct_and_flag(
            run_tests(reference_arrays, window_arrays, config, notes), config
        )
    flagged = [result for result in features if result.flag]
    input_drift = any(result.family in INPUT_FAMILIES for result in flagged)

    heuristics = compute_heuristics(
        window_arrays.continuous["confidence"],
        window_arrays.class_codes,
        window_arrays.inference_ms,
        config,
        enabled=enough,
    )
    recent = compute_recent_metrics(
        heuristics, n_records=window_arrays.n_rows, n_errors=window_arrays.n_errors
    )
    estimate: PerformanceEstimate | None = None
    if n_tested:
        estimate = estimate_performance(
            window_arrays.probs,
            window_arrays.class_codes,
            labels=window_arrays.labels,
            reliable=enough and not input_drift,
            n_draws=config.n_estimate_draws,
            interval_level=config.interval_level,
            seed=config.seed,
        )
        if input_drift:
            notes.append("accuracy estimate unreliable: input (image or embedding) drift")

    stamps = window_arrays.timestamps
    finite_stamps = drop_nonfinite(stamps) if stamps is not None else np.empty(0)
    if not enough:
        status = STATUS_INSUFFICIENT
    else:
        status = STATUS_DRIFT if flagged else STATUS_OK
    return DriftReport(
        status=status,
        drift_detected=bool(recent["drift_detected"]),
        drift_test_detected=bool(flagged),
        drift_share=len(flagged) / len(features) if features else 0.0,
        n_window=window_arrays.n_rows,
        n_tested=n_tested,
        n_reference=n_reference,
        n_errors=window_arrays.n_errors,
        error_rate=recent["error_rate"],
        recent_avg_confidence=recent.get("recent_avg_confidence", math.nan),
        recent_low_confidence_ratio=recent.get("recent_low_confidence_ratio", math.nan),
        features=features,
        heuristics=heuristics,
        estimate=estimate,
        config=config,
        window_start=float(finite_stamps.min()) if finite_stamps.size else None,
        window_end=float(finite_stamps.max()) if finite_stamps.size else None,
        notes=tuple(notes),
    )

"""Inference records → the numeric arrays the drift tests, heuristics and plots use.

Record schema (one row per prediction; the reference profile has the same columns):

- ``predicted_class`` (one of ``CLASS_NAMES``), ``confidence`` (0-1) and the
  four ``prob_<class>`` columns (0-1, summing to 1);
- image statistics ``img_brightness`` (mean luma, 0-255), ``img_contrast``
  (std of luma), ``img_sharpness`` (variance of the Laplacian of luma),
  ``img_mean_r``/``img_mean_g``/``img_mean_b`` (0-255), ``img_width``/``img_height``
  (pixels; not tested by default);
- ``emb_0`` ... ``emb_7``: a reduced penultimate-layer embedding;
- ``ood_score``: distance from the training data (>= 1: beyond the validation split's
  99th percentile; missing or null for models without it);
- records only: ``request_id``, ``timestamp`` (epoch seconds, UTC),
  ``inference_ms``, ``status`` (``"ok"`` or ``"error"``), ``model_name``,
  ``model_version``; reference (or labelled windows) only: ``label``.

Derived features: ``entropy`` of the probabilities (divided by log 4, 0-1), and the
features of ``DriftConfig.log_features`` as ``log1p`` (heavy-tailed sharpness).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from eye_model.config import CLASS_NAMES, PROB_COLUMNS
from eye_model.drift.config import DriftConfig

_REQUIRED_COLUMNS: tuple[str, ...] = ("predicted_class", "confidence", *PROB_COLUMNS)


@dataclass(frozen=True)
class RecordArrays:
    """Numeric columns of the usable (scored) rows of a frame of records.

    Attributes:
        n_rows: rows of the frame, errors included.
        n_errors: rows with status ``error`` or no prediction.
        class_codes: predicted class codes 0-3 of the usable rows.
        probs: class probabilities of the usable rows, shape (n, 4).
        continuous: ``confidence``, ``entropy``, each ``prob_<class>``, the image
            statistics and ``ood_score`` (NaN where null) present, of the usable rows.
        embedding: ``emb_*`` vectors of the usable rows, None when a column is missing.
        inference_ms: inference time (ms) of every row, None when the column is missing.
        labels: true class codes (-1 unknown) of the usable rows, None without labels.
        timestamps: ``timestamp`` (epoch s) of every row, None when the column is missing.
    """

    n_rows: int
    n_errors: int
    class_codes: np.ndarray
    probs: np.ndarray
    continuous: dict[str, np.ndarray]
    embedding: np.ndarray | None
    inference_ms: np.ndarray | None
    labels: np.ndarray | None
    timestamps: np.ndarray | None


def encode_classes(values: pd.Series, *, what: str) -> np.ndarray:
    """Map class names to codes 0-3 (-1 for missing), rejecting unknown names.

    Args:
        values: class names (None/NaN for missing).
        what: the column, for the error message.

    Returns:
        The codes, int64.

    Raises:
        ValueError: a name is not one of ``CLASS_NAMES``.
    """
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


def compute_entropy(probs: np.ndarray) -> np.ndarray:
    """Entropy of each row of probabilities, divided by log(number of classes) (0-1)."""
    clipped = np.clip(probs, 0.0, 1.0)
    logs = np.log(np.where(clipped > 0, clipped, 1.0))
    return -(clipped * logs).sum(axis=1) / math.log(probs.shape[1])


def extract_arrays(frame: pd.DataFrame, config: DriftConfig, *, what: str) -> RecordArrays:
    """Extract the numeric columns of the usable rows once, without copying the frame.

    Args:
        frame: records or reference profile (record schema).
        config: which image, log and embedding features to extract.
        what: ``reference`` or ``window``, for error messages.

    Returns:
        The arrays.

    Raises:
        ValueError: the frame lacks the prediction columns, has unknown class names or
            confidences above 1.
    """
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

    codes = encode_classes(frame["predicted_class"], what=f"{what}.predicted_class")
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
        "entropy": compute_entropy(probs),
    }
    for index, column in enumerate(PROB_COLUMNS):
        continuous[column] = probs[:, index]
    for column in (*config.image_features, *config.ood_features):
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
        labels = encode_classes(frame["label"], what=f"{what}.label")
        labels = labels if rows is None else labels[rows]
    timestamps = _read_column(frame, "timestamp", None) if "timestamp" in frame.columns else None
    return RecordArrays(
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

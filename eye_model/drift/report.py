"""The drift report: what the drift job found about one window, its MLflow metrics and JSON.

Two verdicts, each with its own name everywhere (report fields, metrics, JSON):

- ``drift_detected``: any of the brief's four heuristics fired on the window, the
  meaning the same metric has in serving runs;
- ``drift_test_detected``: a statistical test flagged a feature after corrections.

``status`` (``ok``, ``drift``, ``insufficient_data``) follows the statistical tests.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from eye_model.drift.config import DriftConfig
from eye_model.drift.estimate import PerformanceEstimate
from eye_model.drift.heuristics import HeuristicResult, compute_recent_metrics
from eye_model.drift.stats import FeatureResult

#: Version of the ``drift_report.json`` layout; bump it when a field changes meaning.
#: 2: ``drift_detected`` means "a heuristic fired" (1: "a test fired", now
#: ``drift_test_detected``); ``recent_avg_confidence`` is 0-100 (1: 0-1).
SCHEMA_VERSION = 2

#: File name used when the JSON report is written into a folder.
JSON_REPORT_NAME = "drift_report.json"

STATUS_OK = "ok"
STATUS_DRIFT = "drift"
STATUS_INSUFFICIENT = "insufficient_data"


@dataclass(frozen=True)
class DriftReport:
    """Everything the drift job found about one window.

    Attributes:
        status: ``ok``, ``drift`` (a statistical test fired) or ``insufficient_data``.
        drift_detected: True when any of the brief's four heuristics fired on the window
            (the meaning of ``drift_detected`` in serving runs too).
        drift_test_detected: True when a statistical test flagged a feature after the
            Holm and Bonferroni corrections.
        drift_share: flagged features / tested features (0-1).
        n_window: records in the window, errors included.
        n_tested: usable (non-error) window records.
        n_reference: reference rows.
        n_errors: window records with status ``error`` or no prediction.
        error_rate: ``n_errors / n_window`` (0-1).
        recent_avg_confidence: mean confidence of the usable records, 0-100 (as in
            serving runs); NaN without usable records.
        recent_low_confidence_ratio: share (0-1) of usable records below
            ``low_confidence_cutoff``; NaN without usable records.
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
    drift_test_detected: bool
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
    def alarm(self) -> bool:
        """Either verdict fired: what ``fail_on_drift`` and alerts act on."""
        return self.drift_detected or self.drift_test_detected

    @property
    def flagged_features(self) -> tuple[FeatureResult, ...]:
        """Features counted as drifted."""
        return tuple(result for result in self.features if result.flag)

    @property
    def flagged_heuristics(self) -> tuple[HeuristicResult, ...]:
        """Heuristics past their threshold."""
        return tuple(result for result in self.heuristics if result.flag)

    def summary(self) -> dict[str, Any]:
        """The verdicts in a few JSON-ready fields (the CLI's output line and alerts use them).

        Returns:
            ``status``, ``drift_detected``, ``drift_test_detected``, ``drift_share``,
            ``flagged`` (``family.feature``), ``heuristics`` (names that fired), ``n``
            (window records), ``estimated_accuracy`` (0-1, None without an estimate) and
            ``why`` (for ``insufficient_data``: which minimum was not met).
        """
        return {
            "status": self.status,
            "drift_detected": self.drift_detected,
            "drift_test_detected": self.drift_test_detected,
            "drift_share": self.drift_share,
            "flagged": [f"{f.family}.{f.feature}" for f in self.flagged_features],
            "heuristics": [h.name for h in self.flagged_heuristics],
            "n": self.n_window,
            "estimated_accuracy": self.estimate.estimated_accuracy if self.estimate else None,
            # Why no test ran (too few window or reference records), in words.
            "why": "; ".join(self.notes) if self.status == STATUS_INSUFFICIENT else "",
        }

    def metrics(self) -> dict[str, float]:
        """MLflow metrics of the report (non-finite values are left out).

        Returns:
            The recent-window metrics serving runs also log, with the same units
            (:func:`eye_model.drift.heuristics.compute_recent_metrics`):
            ``recent_avg_confidence`` (0-100), ``recent_low_confidence_ratio`` (0-1),
            ``recent_avg_inference_time_ms`` (ms), ``drift_detected`` (0/1: a heuristic
            fired), ``recent_<heuristic>`` (0/1), ``error_count``, ``error_rate`` (0-1);
            and the drift run's own: ``drift_test_detected`` (0/1: a test fired),
            ``drift_share`` (0-1), ``estimated_accuracy`` and ``estimated_macro_f1``
            (0-1, with ``_lower``/``_upper``), ``estimate_reliable`` (0/1),
            ``true_accuracy`` and ``true_macro_f1`` when labels are known, ``n_window``,
            ``n_tested``, ``n_reference``, ``insufficient_data`` (0/1),
            ``drift.<family>.<feature>.p`` (corrected p-value), ``.p_raw``, ``.effect``,
            ``.effect_lower``, ``.flag`` (0/1), ``heuristic.<name>`` (flag 0/1) and
            ``heuristic.<name>.value`` (in its threshold's unit: confidence and shares
            0-1, time ms).
        """
        values: dict[str, float | None] = dict(
            compute_recent_metrics(self.heuristics, n_records=self.n_window, n_errors=self.n_errors)
        )
        values.update(
            {
                "drift_test_detected": float(self.drift_test_detected),
                "drift_share": self.drift_share,
                "n_window": float(self.n_window),
                "n_tested": float(self.n_tested),
                "n_reference": float(self.n_reference),
                "insufficient_data": float(self.status == STATUS_INSUFFICIENT),
            }
        )
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
        """JSON-safe dictionary of the report (``schema_version`` first; NaN/inf become None)."""
        body = asdict(self)
        summary = self.summary()
        body["flagged_features"] = summary["flagged"]
        body["flagged_heuristics"] = summary["heuristics"]
        return to_json_safe({"schema_version": SCHEMA_VERSION, **body})

    def write_json(self, path: str | Path) -> Path:
        """Write the report as JSON.

        Args:
            path: a file path, or an existing folder (``drift_report.json`` is written in it).

        Returns:
            The path written.
        """
        target = resolve_target(path, JSON_REPORT_NAME)
        text = json.dumps(self.to_dict(), indent=2, allow_nan=False)
        target.write_text(text + "\n", encoding="utf-8")
        return target


def to_json_safe(value: Any) -> Any:
    """Recursively convert to JSON types; NaN and infinities become None."""
    if isinstance(value, Mapping):
        return {str(key): to_json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json_safe(item) for item in value]
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


def resolve_target(path: str | Path, default_name: str) -> Path:
    """The file to write: ``path`` itself, or ``default_name`` inside an existing folder."""
    target = Path(path)
    if target.is_dir():
        target = target / default_name
    target.parent.mkdir(parents=True, exist_ok=True)
    return target

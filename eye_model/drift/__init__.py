"""Drift of the served model: statistical tests, the brief's heuristics, label-free accuracy.

The drift job compares a *window* of inference records (what the served model saw and
answered) with the *reference profile* (the same columns, computed on the validation
split at training time). One idea per module:

- :mod:`~eye_model.drift.config`: :class:`DriftConfig` and the names of tested features;
- :mod:`~eye_model.drift.features`: records → numeric arrays (the record schema);
- :mod:`~eye_model.drift.stats`: KS, chi-square and MMD tests, Holm/Bonferroni, effects;
- :mod:`~eye_model.drift.heuristics`: the brief's four heuristics and the ``recent_*``
  metrics shared with serving runs (one copy of each threshold);
- :mod:`~eye_model.drift.estimate`: label-free accuracy estimate (CBPE style);
- :mod:`~eye_model.drift.compute`: :func:`compute_drift`, the job's core;
- :mod:`~eye_model.drift.report`: :class:`DriftReport`, its metrics and JSON;
- :mod:`~eye_model.drift.plots` and :mod:`~eye_model.drift.html`: the HTML report
  (Jinja2 template ``templates/drift_report.html.j2``);
- :mod:`~eye_model.drift.window`: where records come from, which ones are recent;
- :mod:`~eye_model.drift.alert`: alert payload and cooldown;
- :mod:`~eye_model.drift.job`: :func:`run_drift_job`, the ``drift`` entry point;
- :mod:`~eye_model.drift.validation`: the validation harness and synthetic records
  (not imported here: it is for tests, scripts and benchmarks).
"""

from eye_model.drift.compute import compute_drift
from eye_model.drift.config import (
    EMBEDDING_COLUMNS,
    EMBEDDING_FEATURE,
    FAMILIES,
    IMAGE_FEATURES,
    INPUT_FAMILIES,
    OOD_FEATURES,
    OUTPUT_FEATURES,
    PREDICTION_FEATURE,
    DriftConfig,
)
from eye_model.drift.estimate import (
    PerformanceEstimate,
    compute_classification_scores,
    estimate_performance,
)
from eye_model.drift.heuristics import (
    HeuristicResult,
    compute_heuristics,
    compute_recent_metrics,
)
from eye_model.drift.html import HTML_REPORT_NAME, write_html_report
from eye_model.drift.job import DriftJobResult, ServedModel, load_served_model, run_drift_job
from eye_model.drift.report import (
    JSON_REPORT_NAME,
    SCHEMA_VERSION,
    STATUS_DRIFT,
    STATUS_INSUFFICIENT,
    STATUS_OK,
    DriftReport,
)
from eye_model.drift.stats import (
    Comparison,
    FeatureResult,
    compare_class_distributions,
    compare_embeddings,
    compare_feature_distributions,
    correct_holm,
)
from eye_model.drift.window import (
    gather_records,
    parse_since,
    read_local_records,
    select_window,
)

__all__ = [
    "EMBEDDING_COLUMNS",
    "EMBEDDING_FEATURE",
    "FAMILIES",
    "HTML_REPORT_NAME",
    "IMAGE_FEATURES",
    "INPUT_FAMILIES",
    "JSON_REPORT_NAME",
    "OOD_FEATURES",
    "OUTPUT_FEATURES",
    "PREDICTION_FEATURE",
    "SCHEMA_VERSION",
    "STATUS_DRIFT",
    "STATUS_INSUFFICIENT",
    "STATUS_OK",
    "Comparison",
    "DriftConfig",
    "DriftJobResult",
    "DriftReport",
    "FeatureResult",
    "HeuristicResult",
    "PerformanceEstimate",
    "ServedModel",
    "compare_class_distributions",
    "compare_embeddings",
    "compare_feature_distributions",
    "compute_classification_scores",
    "compute_drift",
    "compute_heuristics",
    "compute_recent_metrics",
    "correct_holm",
    "estimate_performance",
    "gather_records",
    "load_served_model",
    "parse_since",
    "read_local_records",
    "run_drift_job",
    "select_window",
    "write_html_report",
]

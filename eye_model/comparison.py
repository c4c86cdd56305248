"""The champion/challenger comparison: shadow records → a run tagged ``role=comparison``.

The shadow records (:mod:`eye_model.shadow`) of every serving run that had a shadow of the
model are gathered, the last ``window`` are kept (those of the newest champion/challenger
pair), and the run logs:

- ``agreement`` (0-1, share of images given the same class) with ``agreement_ci_low`` and
  ``agreement_ci_high`` (95 % Wilson interval, :func:`scipy.stats.binomtest`);
- the confusion of champion (rows) vs challenger (columns) classes (``comparison.json``);
- ``<model>_confidence_mean`` / ``_p10`` / ``_p50`` / ``_p90`` (0-1) and the same of
  ``ood_score`` where the model gives one (``n_ood`` counts them; null on older models),
  for ``champion`` and ``challenger``;
- ``<model>_estimated_accuracy``: the drift job's label-free estimate
  (:func:`eye_model.drift.estimate.estimate_performance`);
- ``<model>_accuracy`` when a ``labels`` file (request_id,row,label; as the drift job's)
  is given, with ``n_labelled``;

and the HTML report ``comparison_report.html``. ``promote --evidence <run id>`` reads the
run back (:func:`evidence_verdict`).
"""

from __future__ import annotations

import json
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import Metric, RunTag
from mlflow.utils.time import get_current_time_millis

from eye_model.config import CLASS_NAMES, SHADOW_LOG_ARTIFACT_DIR
from eye_model.drift.window import attach_labels, read_local_records, select_window
from eye_model.runs import get_or_create_experiment, log_new_params
from eye_model.settings import Settings

#: The two sides of a comparison: the served model and its shadow.
SIDES = {"champion": "served", "challenger": "shadow"}
#: Fewest records compared; fewer is an error that says how many there are.
MIN_RECORDS = 1

_TEMPLATE = """<!doctype html><html><head><meta charset="utf-8">
<title>Champion vs challenger: {{ name }}</title>
<style>body{font-family:sans-serif;margin:2em}td,th{border:1px solid #ccc;padding:4px 8px;
text-align:right}table{border-collapse:collapse;margin-bottom:1.5em}</style></head><body>
<h1>{{ name }}: champion v{{ champion }} vs challenger v{{ challenger }}</h1>
<p>{{ n }} images scored by both, {{ start }} to {{ end }} (UTC).</p>
<h2>Agreement</h2><p><b>{{ "%.3f"|format(agreement) }}</b>
(95 % Wilson interval {{ "%.3f"|format(low) }} to {{ "%.3f"|format(high) }})</p>
<h2>Classes: champion (rows) vs challenger (columns)</h2>
<table><tr><th></th>{% for c in classes %}<th>{{ c }}</th>{% endfor %}</tr>
{% for r in classes %}<tr><th>{{ r }}</th>{% for c in classes %}
<td>{{ confusion[r][c] }}</td>{% endfor %}</tr>{% endfor %}</table>
<h2>Figures</h2><table><tr><th>figure</th><th>champion</th><th>challenger</th></tr>
{% for key, a, b in figures %}<tr><th>{{ key }}</th><td>{{ a }}</td><td>{{ b }}</td></tr>
{% endfor %}</table></body></html>
"""


@dataclass
class ComparisonResult:
    """What the comparison found (metrics as logged) and its run."""

    run_id: str
    model_name: str
    champion_version: str
    challenger_version: str
    metrics: dict[str, float] = field(default_factory=dict)
    confusion: dict[str, dict[str, int]] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """The JSON line ``eye-model compare`` prints."""
        keys = ("n", "agreement", "agreement_ci_low", "agreement_ci_high")
        return {
            "run_id": self.run_id,
            "champion_version": self.champion_version,
            "challenger_version": self.challenger_version,
            **{k: self.metrics[k] for k in keys if k in self.metrics},
        }


def gather_shadow_records(model_name: str, client: MlflowClient) -> pd.DataFrame:
    """The shadow records of every serving run that had a shadow of ``model_name``."""
    ids = [e.experiment_id for e in client.search_experiments()]
    query = f"tags.role = 'serving' and tags.`shadow.model_name` = '{model_name}'"
    runs = client.search_runs(ids, query, max_results=10_000) if ids else []
    frames = []
    with tempfile.TemporaryDirectory(prefix="eye-model-shadow-") as tmp:
        for run in runs:
            if not client.list_artifacts(run.info.run_id, SHADOW_LOG_ARTIFACT_DIR):
                continue
            local = client.download_artifacts(
                run.info.run_id, SHADOW_LOG_ARTIFACT_DIR, str(Path(tmp) / run.info.run_id)
            )
            frames.append(read_local_records(local))
    frames = [f for f in frames if not f.empty]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def wilson_interval(successes: int, trials: int, level: float = 0.95) -> tuple[float, float]:
    """The Wilson score interval of a proportion (scipy's ``binomtest``)."""
    from scipy.stats import binomtest

    interval = binomtest(successes, trials).proportion_ci(level, method="wilson")
    return float(interval.low), float(interval.high)


def _distribution(values: pd.Series, prefix: str) -> dict[str, float]:
    numbers = pd.to_numeric(values, errors="coerce").dropna().to_numpy(float)
    if numbers.size == 0:
        return {}
    return {
        f"{prefix}_mean": float(numbers.mean()),
        **{f"{prefix}_p{q}": float(np.percentile(numbers, q)) for q in (10, 50, 90)},
    }


def compare_records(window: pd.DataFrame) -> tuple[dict[str, float], dict[str, dict[str, int]]]:
    """Metrics and confusion of a window of shadow records scored by both models.

    Args:
        window: shadow records (both classes present), optionally with ``label``.

    Returns:
        The metrics (names as in the module docstring) and the confusion counts
        (champion class → challenger class → images).
    """
    from eye_model.drift.estimate import estimate_performance

    n = len(window)
    agree = int((window["served_class"] == window["shadow_class"]).sum())
    low, high = wilson_interval(agree, n)
    metrics: dict[str, float] = {
        "n": float(n),
        "agreement": agree / n,
        "agreement_ci_low": low,
        "agreement_ci_high": high,
    }
    labels = None
    if "label" in window.columns:
        known = window["label"].map({c: k for k, c in enumerate(CLASS_NAMES)})
        labels = known.fillna(-1).to_numpy(int)
        metrics["n_labelled"] = float((labels >= 0).sum())
    for side, prefix in SIDES.items():
        metrics.update(_distribution(window[f"{prefix}_confidence"], f"{side}_confidence"))
        column = f"{prefix}_ood_score"
        ood = window[column] if column in window.columns else pd.Series(dtype=float)
        metrics[f"{side}_n_ood"] = float(pd.to_numeric(ood, errors="coerce").notna().sum())
        metrics.update(_distribution(ood, f"{side}_ood_score"))
        probs = window[[f"{prefix}_prob_{c}" for c in CLASS_NAMES]].to_numpy(float)
        codes = window[f"{prefix}_class"].map(CLASS_NAMES.index).to_numpy(int)
        estimate = estimate_performance(probs, codes, labels=labels)
        metrics[f"{side}_estimated_accuracy"] = estimate.estimated_accuracy
        if estimate.true_accuracy is not None and not math.isnan(estimate.true_accuracy):
            metrics[f"{side}_accuracy"] = estimate.true_accuracy
    table = pd.crosstab(window["served_class"], window["shadow_class"])
    table = table.reindex(index=CLASS_NAMES, columns=CLASS_NAMES, fill_value=0)
    confusion = {r: {c: int(table.loc[r, c]) for c in CLASS_NAMES} for r in CLASS_NAMES}
    return metrics, confusion


def run_comparison(
    settings: Settings,
    *,
    model_name: str = "",
    window: int = 1000,
    labels_path: str = "",
    records_path: str = "",
) -> ComparisonResult:
    """Compare the champion with its shadow challenger and log a ``role=comparison`` run.

    Args:
        settings: tracking URI, experiment and model name.
        model_name: registered model; empty → ``MLFLOW_MODEL_NAME``.
        window: the last N images scored by both (0: all).
        labels_path: CSV (request_id, row, label): the true accuracy of each.
        records_path: read shadow records from this folder instead of MLflow.

    Raises:
        ValueError: there are no shadow records (the message says how to make some).
    """
    name = model_name or settings.model_name
    client = MlflowClient(tracking_uri=settings.tracking_uri)
    records = (
        read_local_records(records_path) if records_path else gather_shadow_records(name, client)
    )
    if not records.empty:
        records = records[records["served_class"].notna() & records["shadow_class"].notna()]
    if len(records) < MIN_RECORDS:
        raise ValueError(
            f"no images of {name!r} were scored by a shadow model; serve it with "
            "`eye-model serve --shadow challenger` and send it traffic first"
        )
    records = records.sort_values("timestamp", kind="stable")
    latest = records.iloc[-1]
    pair = (str(latest["served_version"]), str(latest["shadow_version"]))
    same = (records["served_version"].astype(str) == pair[0]) & (
        records["shadow_version"].astype(str) == pair[1]
    )
    selected = select_window(records[same].reset_index(drop=True), window or None)
    if labels_path:
        selected = attach_labels(selected, labels_path)
    metrics, confusion = compare_records(selected)
    result = ComparisonResult("", name, pair[0], pair[1], metrics, confusion)
    result.run_id = _log_comparison(client, settings, result, selected, window, labels_path)
    return result


def _log_comparison(
    client: MlflowClient,
    settings: Settings,
    result: ComparisonResult,
    window: pd.DataFrame,
    size: int,
    labels_path: str,
) -> str:
    if settings.mlflow_run_id:
        run_id = settings.mlflow_run_id
    else:
        experiment = get_or_create_experiment(client, settings.experiment_name)
        run_id = client.create_run(experiment, run_name="compare").info.run_id
    tags = {
        "role": "comparison",
        "model_name": result.model_name,
        "champion_version": result.champion_version,
        "challenger_version": result.challenger_version,
    }
    try:
        client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])
        log_new_params(run_id, {"window": size, "labels": bool(labels_path)}, client=client)
        now = get_current_time_millis()
        metrics = [Metric(k, v, now, 0) for k, v in result.metrics.items() if math.isfinite(v)]
        client.log_batch(run_id, metrics=metrics)
        with tempfile.TemporaryDirectory(prefix="eye-model-compare-") as tmp:
            report = {**tags, "metrics": result.metrics, "confusion": result.confusion}
            (Path(tmp) / "comparison.json").write_text(json.dumps(report, indent=2))
            (Path(tmp) / "comparison_report.html").write_text(_render(result, window))
            client.log_artifacts(run_id, tmp)
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id)
    return run_id


def _render(result: ComparisonResult, window: pd.DataFrame) -> str:
    import datetime as dt

    def when(stamp: float) -> str:
        return dt.datetime.fromtimestamp(float(stamp), tz=dt.UTC).strftime("%Y-%m-%d %H:%M")

    metrics = result.metrics
    keys = sorted({k.split("_", 1)[1] for k in metrics if k.startswith(tuple(SIDES))})
    figures = [
        (key, *(f"{metrics[f'{s}_{key}']:.3f}" if f"{s}_{key}" in metrics else "-" for s in SIDES))
        for key in keys
    ]
    template = jinja2.Environment(autoescape=True).from_string(_TEMPLATE)
    return template.render(
        name=result.model_name,
        champion=result.champion_version,
        challenger=result.challenger_version,
        n=int(metrics["n"]),
        start=when(window["timestamp"].min()),
        end=when(window["timestamp"].max()),
        agreement=metrics["agreement"],
        low=metrics["agreement_ci_low"],
        high=metrics["agreement_ci_high"],
        classes=CLASS_NAMES,
        confusion=result.confusion,
        figures=figures,
    )


def evidence_verdict(
    client: MlflowClient,
    run_id: str,
    *,
    model_name: str,
    version: str,
    production: str,
    tolerance: float,
) -> tuple[bool, dict[str, str]]:
    """Whether a comparison run lets ``version`` replace Production version ``production``.

    The challenger passes unless its accuracy (true accuracy when the comparison had
    labels, else the label-free estimate) is below the champion's by more than
    ``tolerance``.

    Returns:
        The verdict and the gate tags that explain it.

    Raises:
        ValueError: the run is not a comparison of these two versions of this model.
    """
    run = client.get_run(run_id)
    tags, metrics = run.data.tags, run.data.metrics
    expected = {
        "role": "comparison",
        "model_name": model_name,
        "challenger_version": version,
        "champion_version": production,
    }
    wrong = {k: tags.get(k) for k, v in expected.items() if tags.get(k) != v}
    if wrong:
        raise ValueError(
            f"run {run_id} is not a comparison of {model_name} version {version} (challenger) "
            f"with Production version {production}: it has {wrong}; run "
            "`eye-model compare` while the candidate shadows Production and pass that run"
        )
    kind = "accuracy" if "challenger_accuracy" in metrics else "estimated_accuracy"
    challenger, champion = metrics[f"challenger_{kind}"], metrics[f"champion_{kind}"]
    gate_tags = {
        "gate.evidence_run_id": run_id,
        "gate.evidence_measure": kind,
        "gate.evidence_challenger": f"{challenger:.4f}",
        "gate.evidence_champion": f"{champion:.4f}",
        "gate.evidence_agreement": f"{metrics.get('agreement', math.nan):.4f}",
    }
    return challenger >= champion - tolerance, gate_tags

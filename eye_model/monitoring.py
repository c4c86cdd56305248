"""The drift job: gather the window of inference records, compare it with the served model's
reference profile (``eye_model.drift``), log a run tagged ``role=drift``, and alert.

Records come from the serving runs of the model (their ``inference_log/`` artifacts,
matched by the model's training run id, which every serving run carries as the tag
``source_run_id``) or from a local folder of inference-log parts.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow import MlflowClient

from eye_model.drift import (
    DriftConfig,
    DriftReport,
    compute_drift,
    select_window,
    write_html_report,
)
from eye_model.runs import log_new_params
from eye_model.settings import load_settings
from eye_model.telemetry import INFERENCE_LOG_ARTIFACT_DIR
from eye_model.uris import redact_uri

logger = logging.getLogger(__name__)

#: Seconds between two alerts about the same model to the same URL.
DEFAULT_ALERT_COOLDOWN_S = 3600.0


@dataclass
class ServedModel:
    """The model whose window is checked, and where its reference profile comes from."""

    model_uri: str
    name: str
    version: str
    source_run_id: str
    reference: pd.DataFrame


def parse_since(since: str | float | None) -> float | None:
    """Epoch seconds from ``since``: empty → None, a number, or an ISO 8601 time (UTC if naive)."""
    if since is None or str(since).strip() == "":
        return None
    text = str(since).strip()
    try:
        return float(text)
    except ValueError:
        pass
    try:
        moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"since={since!r} is neither epoch seconds nor an ISO 8601 time "
            "(for example 2026-11-26T08:00:00Z)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment.timestamp()


def load_served_model(model_uri: str, client: MlflowClient | None = None) -> ServedModel:
    """Resolve the model URI and read its reference profile (no training data needed).

    Args:
        model_uri: ``models:/<name>/<stage or version>``, ``models:/<name>@<alias>``,
            ``runs:/<run_id>/model`` or a model folder.
        client: an MLflow client.

    Returns:
        The model, its registry name and version (when registered) and its reference profile.
    """
    client = client or MlflowClient()
    name = version = ""
    if model_uri.startswith("models:/") and not model_uri.startswith("models:/m-"):
        from eye_model.registry import quiet_stage_deprecation

        spec = model_uri[len("models:/") :]
        with quiet_stage_deprecation():
            if "@" in spec:
                name, alias = spec.split("@", 1)
                found = client.get_model_version_by_alias(name, alias)
            else:
                name, ref = spec.split("/", 1)
                if ref.isdigit():
                    found = client.get_model_version(name, ref)
                elif ref.lower() == "latest":
                    found = max(
                        client.search_model_versions(f"name='{name}'"), key=lambda v: int(v.version)
                    )
                else:
                    found = client.get_latest_versions(name, stages=[ref])[0]
        version = str(found.version)
        model_uri = f"models:/{name}/{version}"
    with tempfile.TemporaryDirectory(prefix="eye-model-drift-") as tmp:
        local = Path(mlflow.artifacts.download_artifacts(model_uri, dst_path=tmp))
        profile_path = local / "artifacts" / "reference_profile.parquet"
        if not profile_path.is_file():
            raise FileNotFoundError(
                f"{model_uri} has no reference profile (artifacts/reference_profile.parquet); "
                "it was not logged by `eye-model train`: retrain it to monitor drift"
            )
        reference = pd.read_parquet(profile_path)
        import yaml

        meta = yaml.safe_load((local / "MLmodel").read_text()) or {}
    return ServedModel(model_uri, name, version, str(meta.get("run_id") or ""), reference)


def read_local_records(folder: str | Path) -> pd.DataFrame:
    """Read every inference-log part (``*.jsonl``) under ``folder``."""
    paths = sorted(Path(folder).expanduser().rglob("*.jsonl"))
    # convert_dates=False: pandas would turn the epoch-seconds "timestamp" into datetimes.
    frames = [
        pd.read_json(path, lines=True, convert_dates=False, keep_default_dates=False)
        for path in paths
        if path.stat().st_size
    ]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def gather_records(
    source_run_id: str,
    *,
    experiment_name: str | None = None,
    client: MlflowClient | None = None,
) -> pd.DataFrame:
    """Download the inference logs of every serving run of the model from ``source_run_id``."""
    client = client or MlflowClient()
    experiments = (
        [client.get_experiment_by_name(experiment_name)]
        if experiment_name
        else client.search_experiments()
    )
    ids = [e.experiment_id for e in experiments if e is not None]
    if not ids:
        return pd.DataFrame()
    query = f"tags.role = 'serving' and tags.source_run_id = '{source_run_id}'"
    runs = client.search_runs(ids, query, max_results=10_000)
    frames = []
    with tempfile.TemporaryDirectory(prefix="eye-model-records-") as tmp:
        for run in runs:
            names = [
                a.path for a in client.list_artifacts(run.info.run_id, INFERENCE_LOG_ARTIFACT_DIR)
            ]
            if not names:
                continue
            local = mlflow.artifacts.download_artifacts(
                run_id=run.info.run_id,
                artifact_path=INFERENCE_LOG_ARTIFACT_DIR,
                dst_path=str(Path(tmp) / run.info.run_id),
                tracking_uri=client.tracking_uri,
            )
            frame = read_local_records(local)
            if not frame.empty:
                frames.append(frame)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _attach_labels(window: pd.DataFrame, labels_path: str) -> pd.DataFrame:
    """Join true labels (CSV with request_id, row, label) onto the window."""
    labels = pd.read_csv(labels_path, dtype={"request_id": str})
    missing = {"request_id", "row", "label"} - set(labels.columns)
    if missing:
        raise ValueError(
            f"labels file {labels_path} lacks columns {sorted(missing)}; "
            "it needs request_id, row and label"
        )
    merged = window.drop(columns=["label"], errors="ignore").merge(
        labels[["request_id", "row", "label"]], on=["request_id", "row"], how="left"
    )
    return merged


def send_alert(
    alert_url: str,
    payload: dict[str, Any],
    *,
    key: str,
    cooldown_s: float = DEFAULT_ALERT_COOLDOWN_S,
    state_file: Path | None = None,
) -> bool:
    """POST ``payload`` as JSON to ``alert_url`` unless the same alert was sent within the cooldown.

    Returns:
        Whether the alert was sent.
    """
    import requests

    state_file = state_file or _alert_state_file()
    state = json.loads(state_file.read_text()) if state_file.exists() else {}
    slot = f"{redact_uri(alert_url)}|{key}"
    now = time.time()
    if now - float(state.get(slot, 0.0)) < cooldown_s:
        logger.info("drift alert for %s not sent: within the %.0f s cooldown", key, cooldown_s)
        return False
    try:
        response = requests.post(alert_url, json=payload, timeout=10)
        response.raise_for_status()
    except requests.RequestException as exc:
        logger.warning("drift alert to %s failed: %s", redact_uri(alert_url), exc)
        return False
    state[slot] = now
    state_file.parent.mkdir(parents=True, exist_ok=True)
    state_file.write_text(json.dumps(state))
    return True


def _alert_state_file() -> Path:
    home = os.environ.get("EYE_MODEL_HOME")
    root = Path(home) if home else Path.home() / ".cache" / "eye-model"
    return root / "drift_alerts.json"


@dataclass
class DriftJobResult:
    """What the drift job did."""

    run_id: str
    report: DriftReport
    alerted: bool
    exit_code: int


def run_drift_job(
    model_uri: str,
    *,
    window: int = 1000,
    since: str | float | None = None,
    fail_on_drift: bool = False,
    alert_url: str = "",
    records_path: str = "",
    labels_path: str = "",
    config: DriftConfig | None = None,
    alert_cooldown_s: float | None = None,
) -> DriftJobResult:
    """Run the drift job and log one run tagged ``role=drift``.

    Args:
        model_uri: the served model (its reference profile is the comparison).
        window: the last N records (0: all).
        since: only records from this time on (epoch seconds or ISO 8601).
        fail_on_drift: exit code 1 when drift is detected.
        alert_url: POST a JSON alert here when drift is detected (with a cooldown).
        records_path: read inference logs from this folder instead of MLflow.
        labels_path: CSV (request_id, row, label) giving the true accuracy.
        config: thresholds of the tests.
        alert_cooldown_s: seconds between alerts (default ``EYE_MODEL_ALERT_COOLDOWN`` or 3600).

    Returns:
        The run id, the report, whether an alert was sent and the exit code.
    """
    settings = load_settings()
    mlflow.set_tracking_uri(settings.tracking_uri)
    client = MlflowClient()
    served = load_served_model(model_uri, client)
    if records_path:
        records = read_local_records(records_path)
    else:
        records = gather_records(served.source_run_id, client=client)
    since_s = parse_since(since)
    if records.empty:
        logger.warning("no inference records found for %s: reporting insufficient data", model_uri)
        # No records yet: an empty window with the reference's columns is "insufficient data".
        records = pd.DataFrame(columns=[c for c in served.reference.columns if c != "label"])
    selected = select_window(records, window or None, since_s) if not records.empty else records
    if labels_path and not selected.empty:
        selected = _attach_labels(selected, labels_path)
    report = compute_drift(served.reference, selected, config or DriftConfig())

    if not os.environ.get("MLFLOW_RUN_ID"):
        mlflow.set_experiment(settings.experiment_name)
    with mlflow.start_run(run_name="drift") as run, tempfile.TemporaryDirectory() as tmp:
        mlflow.set_tags(
            {
                "role": "drift",
                "model_uri": served.model_uri,
                "model_name": served.name,
                "model_version": served.version,
                "reference_version": served.version or served.source_run_id,
                "source_run_id": served.source_run_id,
                "drift_status": report.status,
            }
        )
        stamps = (
            selected["timestamp"] if "timestamp" in selected.columns else pd.Series(dtype=float)
        )
        log_new_params(
            run.info.run_id,
            {
                "window": window,
                "since": "" if since_s is None else since_s,
                "records_source": "local folder" if records_path else "mlflow",
                "window_start": "" if stamps.empty else _iso(stamps.min()),
                "window_end": "" if stamps.empty else _iso(stamps.max()),
                "n": len(selected),
                "n_reference": len(served.reference),
                "alpha": report.config.alpha,
                "effect_floor": report.config.effect_floor,
            },
        )
        mlflow.log_metrics(report.metrics())
        report.write_json(Path(tmp) / "drift_report.json")
        write_html_report(report, served.reference, selected, Path(tmp) / "drift_report.html")
        mlflow.log_artifacts(tmp)
        run_id = run.info.run_id

    alerted = False
    if alert_url and report.drift_detected:
        base = redact_uri(settings.tracking_uri).rstrip("/")
        link = f"{base}/#/experiments/{run.info.experiment_id}/runs/{run_id}"
        strongest = max(report.flagged_features, key=lambda f: f.effect or 0.0)
        payload = {
            "event": "drift_detected",
            "model_uri": served.model_uri,
            "feature": f"{strongest.family}.{strongest.feature}",
            "statistic": strongest.statistic,
            "p_corrected": strongest.p_corrected,
            "effect": strongest.effect,
            "threshold": {"alpha": report.config.alpha, "effect_floor": report.config.effect_floor},
            "drift_share": report.drift_share,
            "flagged": [f"{f.family}.{f.feature}" for f in report.flagged_features],
            "n": report.n_window,
            "run_id": run_id,
            "run_url": link,
        }
        cooldown = (
            alert_cooldown_s
            if alert_cooldown_s is not None
            else float(os.environ.get("EYE_MODEL_ALERT_COOLDOWN") or DEFAULT_ALERT_COOLDOWN_S)
        )
        alerted = send_alert(alert_url, payload, key=served.model_uri, cooldown_s=cooldown)
    exit_code = 1 if fail_on_drift and report.drift_detected else 0
    return DriftJobResult(run_id, report, alerted, exit_code)


def _iso(stamp: float) -> str:
    return dt.datetime.fromtimestamp(float(stamp), tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

"""The drift job: gather the window of inference records, compare it with the served model's
reference profile, log a run tagged ``role=drift``, and alert.

Everything talks to MLflow through one explicit ``MlflowClient`` built from the
:class:`~eye_model.settings.Settings` the caller passes (the CLI reads them once); nothing
here sets MLflow's global tracking URI or active experiment. Under ``mlflow run`` the job
logs into the run the project started (``MLFLOW_RUN_ID``, ``Settings.mlflow_run_id``).

``fail_on_drift`` and alerts act on :attr:`DriftReport.alarm`: a statistical test
flagged a feature (``drift_test_detected``) **or** one of the brief's heuristics fired
(``drift_detected``). Windows with too few records raise neither.
"""

from __future__ import annotations

import datetime as dt
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
import yaml
from mlflow import MlflowClient
from mlflow.entities import Metric, RunTag
from mlflow.utils.time import get_current_time_millis

from eye_model.drift.alert import ALERT_STATE_NAME, build_alert_payload, send_alert
from eye_model.drift.compute import compute_drift
from eye_model.drift.config import DriftConfig
from eye_model.drift.html import write_html_report
from eye_model.drift.report import DriftReport
from eye_model.drift.window import (
    attach_labels,
    gather_records,
    parse_since,
    read_local_records,
    select_window,
)
from eye_model.runs import get_or_create_experiment, log_new_params
from eye_model.settings import Settings, load_settings
from eye_model.uris import redact_uri

logger = logging.getLogger(__name__)


@dataclass
class ServedModel:
    """The model whose window is checked, and where its reference profile comes from.

    Attributes:
        model_uri: the URI, with a registry stage, alias or ``latest`` resolved to a version.
        name: registered name ("" for a run or folder URI).
        version: registered version ("" for a run or folder URI).
        source_run_id: the training run (serving runs carry it as tag ``source_run_id``).
        reference: the reference profile logged with the model.
    """

    model_uri: str
    name: str
    version: str
    source_run_id: str
    reference: pd.DataFrame


def load_served_model(model_uri: str, client: MlflowClient) -> ServedModel:
    """Resolve the model URI and read its reference profile (no training data needed).

    Args:
        model_uri: ``models:/<name>/<stage or version>``, ``models:/<name>@<alias>``,
            ``runs:/<run_id>/model`` or a model folder.
        client: the client of the tracking server (and registry) holding the model.

    Returns:
        The model, its registry name and version (when registered) and its reference profile.

    Raises:
        FileNotFoundError: the model has no reference profile.
    """
    from eye_model.registry import RegistryError, find_registered_version

    name = version = ""
    try:
        found = find_registered_version(model_uri, client)
    except RegistryError as exc:
        raise ValueError(str(exc)) from None
    if found is not None:  # a registry URI, pinned to its version number
        name, version, model_uri = found.name, found.version, found.uri
    with tempfile.TemporaryDirectory(prefix="eye-model-drift-") as tmp:
        local = Path(
            mlflow.artifacts.download_artifacts(
                model_uri, dst_path=tmp, tracking_uri=client.tracking_uri
            )
        )
        profile_path = local / "artifacts" / "reference_profile.parquet"
        if not profile_path.is_file():
            raise FileNotFoundError(
                f"{model_uri} has no reference profile (artifacts/reference_profile.parquet); "
                "it was not logged by `eye-model train`: retrain it to monitor drift"
            )
        reference = pd.read_parquet(profile_path)
        meta = yaml.safe_load((local / "MLmodel").read_text()) or {}
    return ServedModel(model_uri, name, version, str(meta.get("run_id") or ""), reference)


@dataclass
class DriftJobResult:
    """What the drift job did.

    Attributes:
        run_id: the drift run.
        report: the drift report.
        alerted: whether an alert was sent.
        exit_code: 1 when ``fail_on_drift`` and the report's alarm is set, else 0.
    """

    run_id: str
    report: DriftReport
    alerted: bool
    exit_code: int

    def summary(self) -> dict[str, Any]:
        """The one-line JSON summary the ``eye-model drift`` command prints."""
        return {"run_id": self.run_id, **self.report.summary(), "alerted": self.alerted}


def run_drift_job(
    model_uri: str,
    *,
    settings: Settings | None = None,
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
        settings: tracking URI, experiment, ``home`` (alert state) and alert cooldown;
            read from the environment when None.
        window: the last N records (0: all).
        since: only records from this time on (epoch seconds or ISO 8601).
        fail_on_drift: exit code 1 when a test or a heuristic fired (``report.alarm``).
        alert_url: POST a JSON alert here when a test or a heuristic fired (with a cooldown).
        records_path: read inference logs from this folder instead of MLflow.
        labels_path: CSV (request_id, row, label) giving the true accuracy.
        config: thresholds of the tests.
        alert_cooldown_s: seconds between alerts (default ``settings.alert_cooldown_s``).

    Returns:
        The run id, the report, whether an alert was sent and the exit code.
    """
    settings = settings if settings is not None else load_settings()
    client = MlflowClient(tracking_uri=settings.tracking_uri)
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
        selected = attach_labels(selected, labels_path)
    report = compute_drift(served.reference, selected, config or DriftConfig())

    stamps = selected["timestamp"] if "timestamp" in selected.columns else pd.Series(dtype=float)
    params = {
        "window": window,
        "since": "" if since_s is None else since_s,
        "records_source": "local folder" if records_path else "mlflow",
        "window_start": "" if stamps.empty else _iso(stamps.min()),
        "window_end": "" if stamps.empty else _iso(stamps.max()),
        "n": len(selected),
        "n_reference": len(served.reference),
        "alpha": report.config.alpha,
        "effect_floor": report.config.effect_floor,
    }
    run_id, experiment_id = _log_drift_run(client, settings, served, report, selected, params)

    alerted = False
    base = redact_uri(settings.tracking_uri).rstrip("/")
    payload = build_alert_payload(
        report,
        model_uri=served.model_uri,
        run_id=run_id,
        run_url=f"{base}/#/experiments/{experiment_id}/runs/{run_id}",
    )
    if alert_url and payload is not None:
        alerted = send_alert(
            alert_url,
            payload,
            key=served.model_uri,
            cooldown_s=settings.alert_cooldown_s if alert_cooldown_s is None else alert_cooldown_s,
            state_file=settings.home / ALERT_STATE_NAME,
        )
    exit_code = 1 if fail_on_drift and report.alarm else 0
    return DriftJobResult(run_id, report, alerted, exit_code)


def _log_drift_run(
    client: MlflowClient,
    settings: Settings,
    served: ServedModel,
    report: DriftReport,
    window: pd.DataFrame,
    params: dict[str, Any],
) -> tuple[str, str]:
    """Log tags, parameters, metrics and both reports; return (run id, experiment id).

    Under ``mlflow run`` the project's run (``settings.mlflow_run_id``) is used, otherwise a
    new run named ``drift`` in ``settings.experiment_name``. The run ends FINISHED, or FAILED
    when logging raised.
    """
    if settings.mlflow_run_id:
        run = client.get_run(settings.mlflow_run_id)
    else:
        from mlflow.tracking.context.registry import resolve_tags

        experiment_id = get_or_create_experiment(client, settings.experiment_name)
        # resolve_tags: the user, source and git tags mlflow.start_run would add.
        run = client.create_run(experiment_id, tags=resolve_tags(), run_name="drift")
    run_id = run.info.run_id
    tags = {
        "role": "drift",
        "model_uri": served.model_uri,
        "model_name": served.name,
        "model_version": served.version,
        "reference_version": served.version or served.source_run_id,
        "source_run_id": served.source_run_id,
        "drift_status": report.status,
    }
    try:
        client.log_batch(run_id, tags=[RunTag(key, value) for key, value in tags.items()])
        log_new_params(run_id, params, client=client)
        now = get_current_time_millis()
        metrics = [Metric(key, value, now, 0) for key, value in report.metrics().items()]
        client.log_batch(run_id, metrics=metrics)
        with tempfile.TemporaryDirectory(prefix="eye-model-drift-report-") as tmp:
            report.write_json(Path(tmp))
            write_html_report(report, served.reference, window, Path(tmp))
            client.log_artifacts(run_id, tmp)
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id)
    return run_id, run.info.experiment_id


def _iso(stamp: float) -> str:
    """Epoch seconds as ``YYYY-MM-DDTHH:MM:SSZ``."""
    return dt.datetime.fromtimestamp(float(stamp), tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

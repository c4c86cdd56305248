"""The drift entry point: window from MLflow or a folder, the drift run and its reports,
insufficient data, alerts with a cooldown, the exit code, and the job's MLflow client."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import keras
import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from PIL import ImageEnhance

from eye_model.drift import parse_since, run_drift_job
from eye_model.drift.validation import (
    draw_non_fundus,
    load_classifier,
    render_pool,
    score_images,
)
from eye_model.pyfunc import ModelConfig, log_model
from eye_model.settings import load_settings
from eye_model.stack import find_free_port
from tests.conftest import TrainedModel

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def scored(trained_model: TrainedModel) -> dict[str, pd.DataFrame]:
    """Serving records of unaltered and of darkened images, scored by the trained model."""
    model = load_classifier(trained_model.model_dir)
    images, labels = render_pool(60, 256, seed=4242)
    dark = [ImageEnhance.Brightness(im).enhance(0.6) for im in images]
    return {"clean": score_images(model, images, labels), "dark": score_images(model, dark, labels)}


def _write_parts(records: pd.DataFrame, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    records.drop(columns=["label"]).to_json(
        folder / "part-00000.jsonl", orient="records", lines=True
    )
    return folder


def test_since_accepts_epoch_and_iso() -> None:
    assert parse_since("") is None
    assert parse_since("1700000000") == 1700000000.0
    assert parse_since("2023-11-14T22:13:20Z") == 1700000000.0
    with pytest.raises(ValueError, match="ISO 8601"):
        parse_since("yesterday")


def test_drift_run_from_a_local_folder(
    trained_model: TrainedModel, scored: dict[str, pd.DataFrame], tmp_path: Path
) -> None:
    folder = _write_parts(scored["dark"], tmp_path / "records")
    result = run_drift_job(str(trained_model.model_dir), window=0, records_path=str(folder))
    report = result.report
    assert report.status == "drift"
    assert "image" in {f.family for f in report.flagged_features}
    client = MlflowClient()
    run = client.get_run(result.run_id)
    assert run.data.tags["role"] == "drift"
    assert run.data.tags["source_run_id"] == trained_model.run_id
    assert run.data.params["n"] == "240"
    assert run.data.params["window_start"]
    metrics = run.data.metrics
    assert metrics["drift_test_detected"] == 1  # a statistical test fired
    # drift_detected keeps the meaning it has in serving runs: a heuristic fired.
    assert metrics["drift_detected"] == float(bool(report.flagged_heuristics))
    assert metrics["drift_detected"] == float(report.drift_detected)
    # recent_avg_confidence is 0-100 in drift runs, as in serving runs.
    confidence = scored["dark"]["confidence"]
    assert metrics["recent_avg_confidence"] == pytest.approx(100 * confidence.mean())
    assert metrics["recent_avg_confidence"] > 1.0
    assert metrics["recent_low_confidence_ratio"] == pytest.approx((confidence < 0.7).mean())
    assert "drift_share" in metrics
    assert "estimated_accuracy" in metrics
    assert "estimated_macro_f1" in metrics
    assert metrics["drift.image.img_brightness.flag"] == 1
    assert metrics["drift.image.img_brightness.effect"] >= 0.1
    artifacts = {a.path for a in client.list_artifacts(result.run_id)}
    assert {"drift_report.json", "drift_report.html"} <= artifacts
    local = mlflow.artifacts.download_artifacts(run_id=result.run_id, dst_path=str(tmp_path / "a"))
    body = json.loads((Path(local) / "drift_report.json").read_text())
    assert body["schema_version"] == 2
    assert body["drift_test_detected"] is True
    html = (Path(local) / "drift_report.html").read_text()
    assert "<img" in html
    assert "img_brightness" in html


def test_pictures_unlike_the_training_data_drift_the_ood_score(
    trained_model: TrainedModel,
    scored: dict[str, pd.DataFrame],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A window where a third of the images are not fundus photographs: ood_score drifts
    (embedding family, input drift); the clean window leaves it quiet."""
    rng = np.random.default_rng(8)
    foreign = [draw_non_fundus(256, rng) for _ in range(120)]
    monkeypatch.setenv("EYE_MODEL_FUNDUS_CHECK", "off")  # score them all
    model = load_classifier(trained_model.model_dir)
    mixed = pd.concat(
        [scored["clean"].iloc[:240], score_images(model, foreign, ["normal"] * 120)],
        ignore_index=True,
    )
    assert (mixed["ood_score"].iloc[240:] >= 1.0).mean() >= 0.8
    folder = _write_parts(mixed, tmp_path / "foreign")
    result = run_drift_job(str(trained_model.model_dir), window=0, records_path=str(folder))
    ood = next(f for f in result.report.features if f.feature == "ood_score")
    assert ood.family == "embedding" and ood.flag
    assert ood.n_window == 360
    metrics = MlflowClient().get_run(result.run_id).data.metrics
    assert metrics["drift.embedding.ood_score.flag"] == 1.0
    clean = _write_parts(scored["clean"], tmp_path / "clean")
    quiet = run_drift_job(str(trained_model.model_dir), window=0, records_path=str(clean))
    assert not next(f for f in quiet.report.features if f.feature == "ood_score").flag


def test_no_drift_stays_quiet_and_small_windows_are_insufficient(
    trained_model: TrainedModel, scored: dict[str, pd.DataFrame], tmp_path: Path
) -> None:
    folder = _write_parts(scored["clean"], tmp_path / "clean")
    quiet = run_drift_job(str(trained_model.model_dir), window=0, records_path=str(folder))
    assert quiet.report.status == "ok"
    assert not quiet.report.drift_test_detected
    estimate = quiet.report.estimate
    assert estimate.reliable
    low, high = estimate.estimated_accuracy_interval
    assert low <= estimate.estimated_accuracy <= high
    # Real records carry epoch seconds: the window is the newest 50 of them.
    recent = scored["clean"].assign(timestamp=1.79e9 + np.arange(len(scored["clean"])))
    folder = _write_parts(recent, tmp_path / "recent")
    small = run_drift_job(str(trained_model.model_dir), window=50, records_path=str(folder))
    assert small.report.status == "insufficient_data"
    assert not small.report.alarm  # neither tests nor heuristics fire on too few records
    assert small.exit_code == 0
    assert small.report.n_window == 50
    assert small.report.window_end == pytest.approx(1.79e9 + 239)


def test_window_is_gathered_from_serving_runs(
    trained_model: TrainedModel, scored: dict[str, pd.DataFrame], tmp_path: Path
) -> None:
    """Serving runs are found by the training run of the model they served."""
    artifacts = trained_model.model_dir / "artifacts"
    network = keras.saving.load_model(artifacts / "network.keras", compile=False)
    config = ModelConfig.from_json((artifacts / "config.json").read_text())
    profile = pd.read_parquet(artifacts / "reference_profile.parquet")
    mlflow.set_experiment("drift-job")
    with mlflow.start_run() as training:
        log_model(network, config, reference_profile=profile)
    client = MlflowClient()
    experiment = client.get_experiment_by_name("drift-job").experiment_id
    for part, half in enumerate((scored["dark"].iloc[:120], scored["dark"].iloc[120:])):
        serving = client.create_run(
            experiment, tags={"role": "serving", "source_run_id": training.info.run_id}
        )
        path = _write_parts(half, tmp_path / f"serving-{part}") / "part-00000.jsonl"
        client.log_artifact(serving.info.run_id, str(path), artifact_path="inference_log")
        client.set_terminated(serving.info.run_id)
    os.environ.pop("MLFLOW_EXPERIMENT_ID", None)
    result = run_drift_job(f"runs:/{training.info.run_id}/model", window=0)
    assert result.report.n_window == 240
    assert result.report.drift_test_detected


def test_job_logs_through_its_settings_and_leaves_mlflow_globals_alone(
    trained_model: TrainedModel, scored: dict[str, pd.DataFrame], tmp_path: Path
) -> None:
    """The tracking URI and experiment come from the Settings passed in, not from globals."""
    folder = _write_parts(scored["clean"], tmp_path / "records")
    elsewhere = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    settings = dataclasses.replace(
        load_settings(), tracking_uri=elsewhere, experiment_name="drift-elsewhere"
    )
    before = mlflow.get_tracking_uri()
    result = run_drift_job(
        str(trained_model.model_dir), settings=settings, window=50, records_path=str(folder)
    )
    assert mlflow.get_tracking_uri() == before
    assert "MLFLOW_EXPERIMENT_ID" not in os.environ
    client = MlflowClient(elsewhere)
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["role"] == "drift"
    assert client.get_experiment(run.info.experiment_id).name == "drift-elsewhere"
    assert run.data.params["n"] == "50"
    assert "drift_detected" in run.data.metrics


class _Receiver(BaseHTTPRequestHandler):
    received: list[dict[str, object]] = []

    def do_POST(self) -> None:
        length = int(self.headers["Content-Length"])
        _Receiver.received.append(json.loads(self.rfile.read(length)))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def alert_url() -> Iterator[str]:
    _Receiver.received = []
    server = HTTPServer(("127.0.0.1", find_free_port()), _Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/hook"
    finally:
        server.shutdown()
        server.server_close()


def test_alert_is_posted_once_per_cooldown_and_exit_code_signals_drift(
    trained_model: TrainedModel,
    scored: dict[str, pd.DataFrame],
    tmp_path: Path,
    alert_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("EYE_MODEL_HOME", str(tmp_path / "home"))
    folder = str(_write_parts(scored["dark"], tmp_path / "records"))
    command = [
        str(Path(sys.executable).parent / "eye-model"),
        "drift",
        "--model-uri",
        str(trained_model.model_dir),
        "--window",
        "0",
        "--records",
        folder,
        "--alert-url",
        alert_url,
        "--fail-on-drift",
        "true",
    ]
    first = subprocess.run(command, capture_output=True, text=True, timeout=300, env=os.environ)
    assert first.returncode == 1, first.stderr[-2000:]
    summary = json.loads(first.stdout.strip().splitlines()[-1])
    assert summary["drift_test_detected"] is True
    assert summary["alerted"] is True
    (alert,) = _Receiver.received
    assert alert["n"] == 240
    assert alert["drift_test_detected"] is True
    assert (Path(tmp_path) / "home" / "drift_alerts.json").is_file()  # state under EYE_MODEL_HOME
    assert {"statistic", "threshold", "run_url", "feature"} <= set(alert)
    assert summary["run_id"] in alert["run_url"]
    second = subprocess.run(command, capture_output=True, text=True, timeout=300, env=os.environ)
    assert second.returncode == 1
    assert json.loads(second.stdout.strip().splitlines()[-1])["alerted"] is False
    assert len(_Receiver.received) == 1

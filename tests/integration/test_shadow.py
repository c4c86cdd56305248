"""Shadow scoring against a real tracking server and a real `eye-model serve`: the champion
answers, the challenger scores the same images after the response, and the serving run
gets the shadow records and the agreement metrics."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import keras
import mlflow
import pytest
import requests
from mlflow import MlflowClient

from eye_model.config import SHADOW_LOG_ARTIFACT_DIR
from eye_model.pyfunc import ModelConfig, log_model
from eye_model.registry import promote, register_model
from eye_model.stack import find_free_port, start_process, stop_process, wait_for_http
from tests.helpers import TrackingServer, b64, draw_fundus_like, encode

pytestmark = pytest.mark.slow

NAME = "shadow-test-model"
EXPERIMENT = "shadow-tests"


@pytest.fixture
def tracking(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[TrackingServer]:
    home = tmp_path / "tracking"
    home.mkdir()
    server = TrackingServer(home).start()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.url)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    mlflow.set_tracking_uri(server.url)
    mlflow.set_registry_uri(server.url)
    try:
        yield server
    finally:
        server.stop()


def _register(network: keras.Model, config: ModelConfig) -> str:
    with mlflow.start_run() as run:
        log_model(network, config)
    return register_model(f"runs:/{run.info.run_id}/model", NAME).version


def _versions(tiny_network: keras.Model) -> None:
    """v1 (Production, champion) and v2 (Staging, challenger): the same network, v2 hotter,
    so v2 gives every image the same class with a lower confidence."""
    mlflow.set_experiment("shadow-models")
    config = ModelConfig(image_size=64)
    hotter = ModelConfig(image_size=64, temperature=3.0)
    assert _register(tiny_network, config) == "1"
    assert _register(tiny_network, hotter) == "2"
    os.environ.pop("MLFLOW_EXPERIMENT_ID", None)
    promote(NAME, "1", "Production")
    promote(NAME, "2", "Staging")


def _serving_run(client: MlflowClient) -> object | None:
    experiment = client.get_experiment_by_name(EXPERIMENT)
    if experiment is None:
        return None
    runs = client.search_runs([experiment.experiment_id], "tags.role = 'serving'")
    return runs[0] if runs else None


def _start_serving(
    tracking: TrackingServer, log: Path, args: list[str], **env: str
) -> tuple[subprocess.Popen[bytes], str]:
    """`eye-model serve` (this checkout's code) of the registered model, on a free port."""
    port = find_free_port()
    environment = {
        **os.environ,
        "MLFLOW_TRACKING_URI": tracking.url,
        "MLFLOW_EXPERIMENT_NAME": EXPERIMENT,
        "ENABLE_MODEL_REGISTRY": "true",
        "MLFLOW_MODEL_NAME": NAME,
        "EYE_MODEL_TELEMETRY_DIR": str(log.parent / "telemetry"),
        "EYE_MODEL_LOG_PART_SECONDS": "1",
        "EYE_MODEL_SHIP_INTERVAL": "0.5",
        **env,
    }
    command = [sys.executable, "-m", "eye_model.cli", "serve", "--port", str(port), *args]
    process = start_process(command, log_path=log, env=environment)
    return process, f"http://127.0.0.1:{port}"


def test_shadow_serving_session_logs_agreement(
    tracking: TrackingServer, tiny_network: keras.Model, tmp_path: Path
) -> None:
    _versions(tiny_network)
    log = tmp_path / "serve.log"
    args = ["--alias", "champion", "--shadow", "challenger"]
    process, url = _start_serving(tracking, log, args)
    images = [b64(encode(draw_fundus_like(160, seed=s), "JPEG")) for s in range(9)]
    try:
        wait_for_http(f"{url}/ping", timeout=180, process=process)
        for start, stop in ((0, 1), (1, 4), (4, 9)):  # requests of 1, 3 and 5 images
            rows = [[v] for v in images[start:stop]]
            payload = {"dataframe_split": {"columns": ["image"], "data": rows}}
            response = requests.post(f"{url}/invocations", json=payload, timeout=60)
            assert response.status_code == 200, response.text
            # The answer is the champion's alone: no shadow column in it.
            assert not any("shadow" in k for k in response.json()["predictions"][0])
        client = MlflowClient(tracking.url)
        deadline = time.monotonic() + 90
        run = None
        while time.monotonic() < deadline:
            run = _serving_run(client)
            if run is not None and run.data.metrics.get("shadow_scored_count") == 9:
                break
            time.sleep(1.0)
    finally:
        stop_process(process)
    assert run is not None, log.read_text()[-3000:]
    metrics = run.data.metrics
    assert metrics.get("shadow_scored_count") == 9, (metrics, log.read_text()[-3000:])
    assert metrics["shadow_agreement"] == 1.0
    assert metrics["shadow_mean_confidence_delta"] < 0  # the hotter v2 is less sure
    assert any(k.startswith("shadow_agreement_") and v == 1.0 for k, v in metrics.items())
    assert run.data.tags["shadow.model_version"] == "2"
    assert run.data.tags["model_version"] == "1"
    local = mlflow.artifacts.download_artifacts(
        run_id=run.info.run_id,
        artifact_path=SHADOW_LOG_ARTIFACT_DIR,
        dst_path=str(tmp_path / "shadow"),
        tracking_uri=tracking.url,
    )
    records = [
        json.loads(line)
        for part in sorted(Path(local).glob("part-*.jsonl"))
        for line in part.read_text().splitlines()
    ]
    assert len(records) == 9
    assert {r["served_version"] for r in records} == {"1"}
    assert {r["shadow_version"] for r in records} == {"2"}
    assert all(r["agree"] and r["shadow_confidence"] < r["served_confidence"] for r in records)
    _compare_and_gate(tracking, tmp_path)


def test_a_shadow_that_cannot_load_never_fails_a_request(
    tracking: TrackingServer, tiny_network: keras.Model, tmp_path: Path
) -> None:
    _versions(tiny_network)
    log = tmp_path / "serve.log"
    process, url = _start_serving(
        tracking, log, [], ENABLE_MLFLOW_TRACKING="false", EYE_MODEL_SHADOW_ALIAS="no-such-alias"
    )
    try:
        wait_for_http(f"{url}/ping", timeout=180, process=process)
        image = b64(encode(draw_fundus_like(160, seed=3), "JPEG"))
        payload = {"dataframe_split": {"columns": ["image"], "data": [[image]]}}
        for _ in range(3):
            response = requests.post(f"{url}/invocations", json=payload, timeout=60)
            assert response.status_code == 200, response.text
            assert response.json()["predictions"][0]["error"] is None
        time.sleep(1.0)
    finally:
        stop_process(process)
    text = log.read_text()
    assert "could not be loaded" in text and "EYE_MODEL_SHADOW_ALIAS" in text, text[-3000:]


def test_serve_passes_the_shadow_alias_to_the_model_server() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "eye_model.cli", "serve", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "--shadow" in result.stdout and "EYE_MODEL_SHADOW_ALIAS" in result.stdout


def _cli(tracking: TrackingServer, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking.url, "MLFLOW_EXPERIMENT_NAME": EXPERIMENT}
    command = [sys.executable, "-m", "eye_model.cli", *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)


def _compare_and_gate(tracking: TrackingServer, tmp_path: Path) -> None:
    """`eye-model compare` on the session's shadow records, then `promote --evidence`."""
    result = _cli(tracking, "compare", "--model-name", NAME, "--window", "0")
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["n"] == 9 and summary["agreement"] == 1.0
    assert summary["agreement_ci_low"] < 1.0 and summary["agreement_ci_high"] == 1.0
    client = MlflowClient(tracking.url)
    run = client.get_run(summary["run_id"])
    assert run.data.tags["role"] == "comparison"
    assert (run.data.tags["champion_version"], run.data.tags["challenger_version"]) == ("1", "2")
    metrics = run.data.metrics
    assert metrics["challenger_confidence_mean"] < metrics["champion_confidence_mean"]
    assert metrics["challenger_estimated_accuracy"] < metrics["champion_estimated_accuracy"]
    assert metrics["champion_n_ood"] == 0  # these models give no ood_score yet
    artifacts = {a.path for a in client.list_artifacts(summary["run_id"])}
    assert {"comparison.json", "comparison_report.html"} <= artifacts
    # The same classes, so the offline gate alone would pass v2; the shadow evidence
    # (a lower estimated accuracy) refuses it.
    gate_data = tmp_path / "gate"
    for k, name in enumerate(("cataract", "diabetic_retinopathy", "glaucoma", "normal")):
        (gate_data / name).mkdir(parents=True)
        for s in range(2):
            encoded = encode(draw_fundus_like(96, seed=100 + 10 * k + s), "JPEG")
            (gate_data / name / f"{s}.jpg").write_bytes(encoded)
    result = _cli(
        tracking,
        "promote",
        "--model-name",
        NAME,
        "--version",
        "2",
        "--stage",
        "Production",
        "--eval-data-dir",
        str(gate_data),
        "--evidence",
        summary["run_id"],
    )
    assert result.returncode == 1
    assert "shadow estimated_accuracy" in result.stderr, result.stderr[-2000:]
    tags = client.get_model_version(NAME, "2").tags
    assert tags["gate.evidence_run_id"] == summary["run_id"]
    assert tags["gate.decision"] == "refused"
    assert client.get_model_version(NAME, "1").current_stage == "Production"

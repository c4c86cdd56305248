"""The retraining loop through its CLI against a real tracking server and registry: planted
drift gives a registered challenger and a gate decision; no drift does nothing; a training
failure leaves production untouched; a second loop is refused by the lock."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import keras
import mlflow
import pytest
from mlflow import MlflowClient

from eye_model.drift.validation import simulate_records
from eye_model.pyfunc import ModelConfig, log_model
from eye_model.registry import promote, register_model
from eye_model.retrain import LOCK_NAME, champion_training_config, retrain_lock
from eye_model.synthetic import generate_dataset
from tests.helpers import TrackingServer

pytestmark = pytest.mark.slow

EXPERIMENT = "retrain-tests"
#: The champion's training parameters: the loop trains with these (tiny and fast).
CHAMPION_PARAMS = {
    "image_size": 64,
    "epochs": 1,
    "batch_size": 16,
    "backbone": "small_cnn",
    "weights": "none",
    "learning_rate": 0.003,
    "seed": 3,
    "synthetic_per_class": 12,
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TrackingServer]:
    tracking = TrackingServer(tmp_path_factory.mktemp("retrain-server")).start()
    try:
        yield tracking
    finally:
        tracking.stop()


@pytest.fixture(autouse=True)
def use_server(server: TrackingServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.url)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    mlflow.set_tracking_uri(server.url)
    mlflow.set_registry_uri(server.url)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Training data, gate data, and inference-log folders without and with planted drift."""
    root = tmp_path_factory.mktemp("retrain-data")
    generate_dataset(root / "train", per_class=12, image_size=64, seed=5, progress=False)
    generate_dataset(root / "gate", per_class=5, image_size=64, seed=6, progress=False)
    (root / "empty").mkdir()
    for name, planted in (("steady", {}), ("drifted", {"brightness_scale": 0.5})):
        records = simulate_records(400, seed=21, **planted)  # type: ignore[arg-type]
        if planted:  # and one class takes over, as a broken camera or a new clinic would
            records["predicted_class"] = "cataract"
        folder = root / name
        folder.mkdir()
        records.to_json(folder / "part-00001.jsonl", orient="records", lines=True)
    return {k: root / k for k in ("train", "gate", "empty", "steady", "drifted")}


def _champion(name: str, network: keras.Model) -> None:
    """Version 1 in Production: the tiny network, its training parameters, a reference profile
    that the steady records match."""
    mlflow.set_experiment("retrain-champions")
    reference = simulate_records(400, seed=20, as_reference=True)
    with mlflow.start_run() as run:
        mlflow.set_tag("role", "training")
        mlflow.log_params(CHAMPION_PARAMS)
        log_model(network, ModelConfig(image_size=64), reference_profile=reference)
    os.environ.pop("MLFLOW_EXPERIMENT_ID", None)
    register_model(f"runs:/{run.info.run_id}/model", name)
    promote(name, "1", "Production")


def _retrain(
    server: TrackingServer, home: Path, name: str, *args: str
) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": server.url,
        "MLFLOW_EXPERIMENT_NAME": EXPERIMENT,
        "EYE_MODEL_HOME": str(home),
        "EYE_MODEL_CACHE": str(home / "cache"),
    }
    command = [sys.executable, "-m", "eye_model.cli", "retrain", "--model-name", name, *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)


def _state(name: str) -> dict[str, str]:
    client = MlflowClient()
    return {str(v.version): v.current_stage for v in client.search_model_versions(f"name='{name}'")}


def _parent(result: subprocess.CompletedProcess[str]) -> dict[str, object]:
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    run = MlflowClient().get_run(str(summary["run_id"]))
    assert run.data.tags["role"] == "retrain"
    assert run.info.status == "FINISHED"
    return {"summary": summary, "tags": run.data.tags}


def test_planted_drift_trains_registers_a_challenger_and_gates_it(
    server: TrackingServer, tiny_network: keras.Model, data: dict[str, Path], tmp_path: Path
) -> None:
    _champion("loop-drift", tiny_network)
    result = _retrain(
        server,
        tmp_path,
        "loop-drift",
        "--records",
        str(data["drifted"]),
        "--data-dir",
        str(data["train"]),
        "--eval-data-dir",
        str(data["gate"]),
    )
    parent = _parent(result)
    summary, tags = parent["summary"], parent["tags"]
    assert isinstance(summary, dict) and isinstance(tags, dict)
    assert summary["drift_alarm"] is True
    assert summary["challenger_version"] == "2"
    assert summary["decision"] in ("promoted", "kept_champion")
    client = MlflowClient()
    # The links: drift, training and gate runs, each of its role.
    for key, role in (("drift", "drift"), ("training", "training"), ("gate", "gate")):
        linked = client.get_run(tags[f"retrain.{key}_run_id"])
        assert linked.data.tags["role"] == role
    training = client.get_run(tags["retrain.training_run_id"])
    for param, value in CHAMPION_PARAMS.items():  # the champion's parameters, its new data
        assert training.data.params[param] == str(value)
    assert training.data.params["data_dir"] == str(data["train"])
    gate = client.get_run(tags["retrain.gate_run_id"])
    assert {"candidate_macro_f1", "production_macro_f1"} <= set(gate.data.metrics)
    version = client.get_model_version("loop-drift", "2")
    assert version.tags["gate.decision"] in ("accepted", "refused")
    if summary["decision"] == "promoted":
        assert _state("loop-drift") == {"1": "Archived", "2": "Production"}
    else:
        assert _state("loop-drift") == {"1": "Production", "2": "Staging"}


def test_no_drift_does_nothing(
    server: TrackingServer, tiny_network: keras.Model, data: dict[str, Path], tmp_path: Path
) -> None:
    _champion("loop-steady", tiny_network)
    result = _retrain(
        server, tmp_path, "loop-steady", "--records", str(data["steady"]), "--data-dir", "x"
    )
    parent = _parent(result)
    assert parent["summary"]["decision"] == "no_drift"  # type: ignore[index]
    assert "retrain.training_run_id" not in parent["tags"]  # type: ignore[operator]
    assert _state("loop-steady") == {"1": "Production"}
    # A dry run that would always train says so, and changes nothing either.
    dry = _retrain(
        server,
        tmp_path,
        "loop-steady",
        "--records",
        str(data["steady"]),
        "--trigger",
        "always",
        "--dry-run",
        "true",
    )
    assert _parent(dry)["summary"]["decision"] == "would_retrain"  # type: ignore[index]
    assert _state("loop-steady") == {"1": "Production"}


def test_failed_training_leaves_production_untouched(
    server: TrackingServer, tiny_network: keras.Model, data: dict[str, Path], tmp_path: Path
) -> None:
    _champion("loop-broken", tiny_network)
    result = _retrain(
        server,
        tmp_path,
        "loop-broken",
        "--records",
        str(data["steady"]),
        "--trigger",
        "always",
        "--data-dir",
        str(data["empty"]),  # no images: training fails
    )
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.startswith("Error")]
    assert len(lines) == 1 and "training failed" in lines[0], result.stderr[-3000:]
    assert "production is unchanged (loop-broken version 1)" in lines[0]
    assert _state("loop-broken") == {"1": "Production"}
    client = MlflowClient()
    experiment = client.get_experiment_by_name(EXPERIMENT)
    assert experiment is not None
    (run,) = client.search_runs(
        [experiment.experiment_id], "tags.role = 'retrain' and tags.model_name = 'loop-broken'"
    )
    assert run.info.status == "FAILED"
    assert run.data.tags["retrain.decision"] == "failed"


def test_a_second_loop_is_refused_by_the_lock(
    server: TrackingServer, tiny_network: keras.Model, data: dict[str, Path], tmp_path: Path
) -> None:
    _champion("loop-locked", tiny_network)
    with retrain_lock(tmp_path / LOCK_NAME):  # a first loop is running
        result = _retrain(server, tmp_path, "loop-locked", "--records", str(data["drifted"]))
    assert result.returncode == 1
    assert "another retraining loop is running" in result.stderr
    assert f"pid {os.getpid()}" in result.stderr
    assert _state("loop-locked") == {"1": "Production"}


def test_training_parameters_come_from_the_champion_run() -> None:
    params = {k: str(v) for k, v in CHAMPION_PARAMS.items()} | {"register_as": "x"}
    config = champion_training_config(params, "/data/new")
    assert (config.image_size, config.epochs, config.learning_rate) == (64, 1, 0.003)
    assert config.data_dir == "/data/new" and config.register_as == ""

"""Every MLproject entry point run through `mlflow run` with tiny parameters, as users run them.

(`train` is run this way in tests/model/test_training.py; here: synthesize, register, promote,
drift and probe with the local environment, and synthesize and batch_score in the environment
MLflow builds itself from python_env.yaml, its default.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import mlflow
import pytest
from mlflow import MlflowClient

from eye_model.pyfunc import ModelConfig, log_model
from tests.conftest import TrainedModel

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def _mlflow_run(
    entry: str,
    params: dict[str, str],
    tmp_path: Path,
    *,
    env_manager: str | None = "local",
    timeout: float = 600,
) -> subprocess.CompletedProcess:
    command = [str(Path(sys.executable).parent / "mlflow"), "run", str(ROOT), "-e", entry]
    if env_manager:
        command += ["--env-manager", env_manager]
    command += ["--experiment-name", "entry-points"]
    for key, value in params.items():
        command += ["-P", f"{key}={value}"]
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "EYE_MODEL_CACHE": str(tmp_path / "cache"),
    }
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)


def test_synthesize(tmp_path: Path) -> None:
    out = tmp_path / "synthetic"
    result = _mlflow_run(
        "synthesize",
        {"out_dir": str(out), "per_class": "3", "image_size": "96", "seed": "5"},
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert sorted(p.name for p in out.iterdir()) == [
        "cataract",
        "diabetic_retinopathy",
        "glaucoma",
        "normal",
    ]
    assert len(list(out.glob("*/*.jpg"))) == 12


def test_register_promote_and_drift(
    trained_model: TrainedModel, tmp_path: Path, tracking_store: str
) -> None:
    artifacts = trained_model.model_dir / "artifacts"
    network = keras.saving.load_model(artifacts / "network.keras", compile=False)
    config = ModelConfig.from_json((artifacts / "config.json").read_text())
    import pandas as pd

    profile = pd.read_parquet(artifacts / "reference_profile.parquet")
    with mlflow.start_run() as run:
        mlflow.set_tag("role", "training")
        log_model(network, config, reference_profile=profile)
    uri = f"runs:/{run.info.run_id}/model"

    registered = _mlflow_run("register", {"model_uri": uri, "model_name": "ep-model"}, tmp_path)
    assert registered.returncode == 0, registered.stderr[-2000:]
    again = _mlflow_run("register", {"model_uri": uri, "model_name": "ep-model"}, tmp_path)
    assert again.returncode != 0
    assert "already registered as version 1" in again.stderr

    promoted = _mlflow_run(
        "promote", {"model_name": "ep-model", "version": "1", "stage": "Production"}, tmp_path
    )
    assert promoted.returncode == 0, promoted.stderr[-2000:]
    client = MlflowClient(tracking_store)
    assert client.get_model_version("ep-model", "1").current_stage == "Production"
    aliases = client.get_registered_model("ep-model").aliases
    assert {k: str(v) for k, v in aliases.items()} == {"champion": "1"}

    drift = _mlflow_run(
        "drift", {"model_uri": "models:/ep-model/Production", "window": "0"}, tmp_path
    )
    assert drift.returncode == 0, drift.stderr[-2000:]
    summary = json.loads(drift.stdout.strip().splitlines()[-1])
    assert summary["status"] == "insufficient_data"  # nothing served yet
    drift_run = client.get_run(summary["run_id"])
    assert drift_run.data.tags["role"] == "drift"
    assert drift_run.data.tags["model_version"] == "1"


def test_probe_through_mlflow_run(tmp_path: Path, tracking_store: str) -> None:
    """`mlflow run . -e probe` checks a server (here none answers) and logs one probe run."""
    from eye_model.stack import find_free_port

    url = f"http://127.0.0.1:{find_free_port()}"
    result = _mlflow_run(
        "probe", {"url": url, "interval": "0.2", "count": "2", "timeout": "1"}, tmp_path
    )
    assert result.returncode != 0  # the last check failed
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary == {"checks": 2, "failures": 2}
    client = MlflowClient(tracking_store)
    experiment = client.get_experiment_by_name("entry-points")
    runs = client.search_runs([experiment.experiment_id])
    probes = [r for r in runs if r.data.metrics.get("health_check_count") == 2]
    assert len(probes) == 1
    assert probes[0].data.metrics["health_check_failures"] == 2


def test_synthesize_and_batch_score_in_mlflows_own_environment(
    tiny_model_path: Path, tmp_path: Path
) -> None:
    """With MLflow's default environment manager (a virtualenv built from python_env.yaml,
    offline from the package index), synthesize and batch_score work: every dependency an
    entry point needs (pyspark included) is in python_env.yaml."""
    out = tmp_path / "synthetic"
    made = _mlflow_run(
        "synthesize",
        {"out_dir": str(out), "per_class": "2", "image_size": "96", "seed": "3"},
        tmp_path,
        env_manager=None,
        timeout=2400,
    )
    assert made.returncode == 0, made.stderr[-3000:]
    assert len(list(out.glob("*/*.jpg"))) == 8
    assert "virtualenv" in made.stderr.lower() or "environment" in made.stderr.lower()
    scores = tmp_path / "scores.parquet"
    scored = _mlflow_run(
        "batch_score",
        {
            "input": str(out),
            "output": str(scores),
            "model_uri": str(tiny_model_path),
            "master": "local[1]",
        },
        tmp_path,
        env_manager=None,
        timeout=1200,
    )
    assert scored.returncode == 0, scored.stderr[-3000:]
    import pandas as pd

    frame = pd.read_parquet(scores)
    assert len(frame) == 8
    assert frame["error"].isna().all()

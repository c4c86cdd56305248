"""`mlflow run . -e tune`: an Optuna study against a real tracking server, trials as nested runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient
from PIL import Image

from eye_model.tune import TuneConfig, suggest_params
from tests.helpers import TrackingServer

ROOT = Path(__file__).resolve().parents[2]


def test_the_search_space_is_the_configured_one() -> None:
    config = TuneConfig(backbones="small_cnn", batch_sizes="8,16", learning_rate_min=1e-3)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(20):
        params = suggest_params(study.ask(), config)
        assert params["backbone"] == "small_cnn"
        assert params["batch_size"] in (8, 16)
        assert 1e-3 <= params["learning_rate"] <= 1e-2
    with pytest.raises(ValueError, match="unknown; choose from small_cnn"):
        suggest_params(study.ask(), TuneConfig(backbones="resnet_9000"))
    with pytest.raises(ValueError, match="batch_sizes is empty"):
        suggest_params(study.ask(), TuneConfig(batch_sizes=" , "))


@pytest.mark.slow
def test_a_tiny_study_logs_nested_trials_and_the_best_on_the_parent(tmp_path: Path) -> None:
    home = tmp_path / "tracking"
    home.mkdir()
    server = TrackingServer(home).start()
    try:
        env = {
            **os.environ,
            "MLFLOW_TRACKING_URI": server.url,
            "EYE_MODEL_CACHE": str(tmp_path / "cache"),
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        }
        params = {
            "synthetic_per_class": "16",
            "image_size": "64",
            "epochs": "3",
            "trials": "3",
            "backbones": "small_cnn",
            "batch_sizes": "8,16",
            "seed": "3",
        }
        command = [str(Path(sys.executable).parent / "mlflow"), "run", str(ROOT), "-e", "tune"]
        command += ["--env-manager", "local", "--experiment-name", "tuning"]
        for key, value in params.items():
            command += ["-P", f"{key}={value}"]
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
        assert result.returncode == 0, result.stderr[-3000:]
        lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
        assert lines, result.stdout[-3000:]
        summary = json.loads(lines[-1])
        client = MlflowClient(server.url)
        parent = client.get_run(summary["run_id"])
        trials = client.search_runs(
            [parent.info.experiment_id],
            filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
        )
        best_file = client.download_artifacts(parent.info.run_id, "best_params.json", tmp_path)
        reported = [client.get_metric_history(t.info.run_id, "epoch_val_macro_f1") for t in trials]
    finally:
        server.stop()
    assert parent.data.tags["role"] == "tuning"
    assert parent.data.tags["mlflow.project.entryPoint"] == "tune"
    assert len(trials) == 3
    assert {t.data.tags["role"] for t in trials} == {"tuning_trial"}
    states = [t.data.tags["tuning.state"] for t in trials]
    assert set(states) <= {"complete", "pruned"}
    assert parent.data.metrics["trials_complete"] == states.count("complete")
    assert parent.data.metrics["trials_pruned"] == states.count("pruned")
    complete = [t for t in trials if t.data.tags["tuning.state"] == "complete"]
    best = max(complete, key=lambda t: t.data.metrics["val_macro_f1"])
    assert parent.data.metrics["best_val_macro_f1"] == pytest.approx(
        best.data.metrics["val_macro_f1"]
    )
    assert parent.data.tags["tuning.best_trial"] == best.data.tags["tuning.trial"]
    for name in ("learning_rate", "batch_size", "backbone"):
        assert parent.data.params[f"best_{name}"] == best.data.params[name]
    assert json.loads(Path(best_file).read_text())["params"]["backbone"] == "small_cnn"
    # Each epoch reported the validation figure the pruner judges; a pruned trial stopped.
    for trial, history in zip(trials, reported, strict=True):
        epochs = 3 if trial.data.tags["tuning.state"] == "complete" else 2
        assert [m.step for m in sorted(history, key=lambda m: m.step)] == list(range(1, epochs + 1))


@pytest.mark.slow
def test_a_trial_below_the_median_stops_early(tracking_store: str, tmp_path: Path) -> None:
    """Two earlier trials scored above any reachable figure: the third is pruned at epoch 2."""
    import mlflow
    import numpy as np

    from eye_model.data import ImageSet
    from eye_model.train import TrainConfig, fit_network
    from eye_model.tune import OBJECTIVE, pruner, pruning_reporter

    study = optuna.create_study(direction="maximize", pruner=pruner())
    for _ in range(2):
        study.add_trial(
            optuna.trial.create_trial(
                params={}, distributions={}, value=1.5, intermediate_values={1: 1.5, 2: 1.5, 3: 1.5}
            )
        )
    rng = np.random.default_rng(0)

    def images(n: int, name: str) -> ImageSet:
        """n noise pictures written as PNG files (training streams them from disk)."""
        folder = tmp_path / name
        folder.mkdir()
        sources = []
        for i in range(n):
            path = folder / f"{i}.png"
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(path)
            sources.append(str(path))
        return ImageSet(sources, np.arange(n) % 4, 32)

    train, validation = images(32, "train"), images(16, "validation")
    reporter = pruning_reporter(study.ask(), validation)
    config = TrainConfig(image_size=32, epochs=4, batch_size=16, seed=1)
    with mlflow.start_run() as run:
        fitted = fit_network(config, train, validation, callbacks=[reporter])
    assert reporter.pruned_at == 2
    assert len(fitted.history["loss"]) == 2  # the fit stopped there, not at epoch 4
    history = mlflow.MlflowClient(tracking_store).get_metric_history(
        run.info.run_id, f"epoch_{OBJECTIVE}"
    )
    assert sorted(m.step for m in history) == [1, 2]

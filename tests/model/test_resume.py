"""Resumable training: a real training process killed mid-run continues in the same run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from eye_model.checkpoints import CHECKPOINT_ARTIFACTS
from eye_model.train import TrainConfig, config_of_run

EPOCHS = 8


def _env(tmp_path: Path, tracking_store: str) -> dict[str, str]:
    return {
        **os.environ,
        "MLFLOW_TRACKING_URI": tracking_store,
        "MLFLOW_EXPERIMENT_NAME": "resume-test",
        "EYE_MODEL_CACHE": str(tmp_path / "cache"),
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }


def _train(*args: str) -> list[str]:
    return [sys.executable, "-m", "eye_model.cli", "train", *args]


def _wait_for_first_checkpoint(process: subprocess.Popen[bytes], cache: Path) -> Path:
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        found = list(cache.glob("checkpoints/*/training_metadata.json"))
        if found:
            return found[0]
        assert process.poll() is None, "training ended before its first checkpoint"
        time.sleep(0.05)
    raise AssertionError("no checkpoint within 15 minutes")


@pytest.mark.slow
def test_a_killed_training_run_resumes_in_the_same_run(tmp_path: Path, tracking_store: str) -> None:
    env = _env(tmp_path, tracking_store)
    args = ["--synthetic-per-class", "60", "--image-size", "64", "--batch-size", "16"]
    args += ["--epochs", str(EPOCHS), "--seed", "3"]
    process = subprocess.Popen(
        _train(*args),
        env=env,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        metadata = _wait_for_first_checkpoint(process, tmp_path / "cache")
        time.sleep(0.5)  # into the next epoch
        process.send_signal(signal.SIGKILL)
        assert process.wait(timeout=60) == -signal.SIGKILL
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    run_id = metadata.parent.name
    client = MlflowClient(tracking_store)
    killed = client.get_run(run_id)
    assert killed.info.status == "RUNNING"  # SIGKILL leaves no chance to end it
    done = json.loads(metadata.read_text())["epoch"]
    assert 1 <= done < EPOCHS, "killed after training had ended: nothing left to resume"
    artifacts = {a.path for a in client.list_artifacts(run_id, CHECKPOINT_ARTIFACTS)}
    assert f"{CHECKPOINT_ARTIFACTS}/latest.weights.h5" in artifacts
    # Resume on "another machine": only the run's artifacts hold the checkpoint.
    for item in metadata.parent.iterdir():
        item.unlink()
    metadata.parent.rmdir()

    resumed = subprocess.run(
        _train("--resume", run_id),
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    summary = json.loads(resumed.stdout.strip().splitlines()[-1])
    assert summary["run_id"] == run_id
    # A tiny training (chance is 0.25): it learnt after the restart; the recipe's label
    # smoothing and schedule gave 0.66-1.0 on this set across runs.
    assert summary["test_macro_f1"] >= 0.55
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["epochs"] == str(EPOCHS)  # the run's own parameters
    steps = sorted({m.step for m in client.get_metric_history(run_id, "epoch_loss")})
    assert steps == list(range(1, len(steps) + 1))  # no epoch lost, none counted twice
    assert run.data.metrics["epochs_run"] == len(steps) > done
    assert not (tmp_path / "cache" / "checkpoints" / run_id).exists()  # cleaned up at the end
    assert f"runs:/{run_id}/model" == summary["model_uri"]

    again = subprocess.run(
        _train("--resume", run_id), env=env, cwd=tmp_path, capture_output=True, text=True
    )
    assert again.returncode == 1
    errors = [line for line in again.stderr.splitlines() if line.startswith("Error")]
    assert errors == [
        f"Error: run {run_id!r} finished already; nothing to resume (train "
        "without --resume to start a new run)"
    ]


def test_resuming_an_unknown_run_is_one_clear_line(tmp_path: Path, tracking_store: str) -> None:
    result = subprocess.run(
        _train("--resume", "0123456789abcdef0123456789abcdef"),
        env=_env(tmp_path, tracking_store),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    # (A new SQLite store logs its creation first: MLflow's lines, not ours.)
    lines = [line for line in result.stderr.splitlines() if "mlflow.store.db" not in line]
    assert len(lines) == 1, lines
    assert lines[0].startswith("Error: no run '0123456789abcdef0123456789abcdef' on the tracking")
    assert "interrupted" in lines[0]


def test_a_run_resumes_with_its_own_parameters() -> None:
    params = {"epochs": "6.0", "image_size": "64", "learning_rate": "0.001", "data_dir": "''"}
    config = config_of_run("abc", params)
    assert config == TrainConfig(
        epochs=6, image_size=64, learning_rate=0.001, data_dir="", resume="abc"
    )


def test_a_checkpoint_restores_weights_optimizer_and_callback_counters(tmp_path: Path) -> None:
    import keras
    import numpy as np

    from eye_model.checkpoints import build_checkpoint_callback

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(64, 4)).astype("float32"), rng.integers(0, 2, 64)

    def fresh() -> tuple[keras.Model, list[keras.callbacks.Callback]]:
        keras.utils.set_random_seed(1)
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
        model.compile(
            optimizer=keras.optimizers.Adam(0.01),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        stateful = [
            keras.callbacks.EarlyStopping(monitor="loss", patience=50, restore_best_weights=True),
            keras.callbacks.ReduceLROnPlateau(monitor="loss", factor=0.5, patience=0),
        ]
        return model, stateful

    folder = tmp_path / "checkpoint"
    model, stateful = fresh()

    class Interrupt(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
            if epoch == 2:
                raise KeyboardInterrupt  # as if killed after the third epoch's checkpoint

    with pytest.raises(KeyboardInterrupt):
        model.fit(
            x,
            y,
            epochs=6,
            verbose=0,
            callbacks=[
                *stateful,
                build_checkpoint_callback(folder, stateful, log_to_run=False),
                Interrupt(),
            ],
        )
    saved_weights = [w.copy() for w in model.get_weights()]
    saved_optimizer = [np.asarray(v).copy() for v in model.optimizer.variables]
    early_best, early_wait = stateful[0].best, stateful[0].wait

    resumed, restored = fresh()
    checkpoint = build_checkpoint_callback(folder, restored, log_to_run=False)

    class Check(keras.callbacks.Callback):
        def on_train_begin(self, logs: dict[str, float] | None = None) -> None:
            for got, want in zip(resumed.get_weights(), saved_weights, strict=True):
                np.testing.assert_array_equal(got, want)
            for got, want in zip(resumed.optimizer.variables, saved_optimizer, strict=True):
                np.testing.assert_array_equal(np.asarray(got), want)
            assert restored[0].best == early_best and restored[0].wait == early_wait
            assert restored[0].best_weights is not None
            raise StopIteration

    with pytest.raises(StopIteration):
        resumed.fit(x, y, epochs=6, verbose=0, callbacks=[*restored, checkpoint, Check()])
    assert resumed._initial_epoch == 3
    assert int(np.asarray(resumed.optimizer.iterations)) == 3 * 2  # 64 images, batches of 32

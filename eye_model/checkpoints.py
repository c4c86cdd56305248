"""Resumable training: a checkpoint every epoch, kept locally and in the run's artifacts.

A training run writes its checkpoint after every epoch into
``<cache_dir>/checkpoints/<run_id>`` and copies it to the run's artifacts
(``checkpoints/``). ``eye-model train --resume RUN_ID`` reopens the same MLflow run, takes
the checkpoint from the local folder or, on another machine, from the artifacts, and
continues from the last finished epoch: the network's weights, the optimizer's state
(Adam's moments, the learning rate) and the state of the early-stopping and
learning-rate callbacks, so the resumed run ends as the uninterrupted one would.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

logger = logging.getLogger(__name__)

#: Artifact folder of a run's latest checkpoint.
CHECKPOINT_ARTIFACTS = "checkpoints"

# Callback attributes that make up their state (EarlyStopping, ReduceLROnPlateau, ...).
_CALLBACK_STATE = ("wait", "best", "best_epoch", "cooldown_counter", "stopped_epoch")
_STATE_FILE = "callback_state.json"
_OPTIMIZER_FILE = "optimizer.npz"
_BEST_WEIGHTS_FILE = "best_weights_{index}.npz"


class ResumeError(ValueError):
    """A run that cannot be resumed; the message names the run and what to do."""


def checkpoint_dir(cache_dir: Path, run_id: str) -> Path:
    """Local folder of a run's checkpoint: ``<cache_dir>/checkpoints/<run_id>``."""
    return Path(cache_dir) / "checkpoints" / run_id


def resumable_params(client: MlflowClient, run_id: str) -> dict[str, str]:
    """The parameters of a training run that can be resumed.

    Args:
        client: the tracking server's client.
        run_id: the run to resume.

    Returns:
        The run's logged parameters (name → text).

    Raises:
        ResumeError: no such run, not a training run, or a run that finished.
    """
    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise ResumeError(
            f"no run {run_id!r} on the tracking server {client.tracking_uri}; pass the id of "
            "a training run that was interrupted (the MLflow UI lists it as running or failed)"
        ) from None
    if run.data.tags.get("role") != "training":
        raise ResumeError(f"run {run_id!r} is not a training run; pass a training run's id")
    if run.info.status == "FINISHED":
        raise ResumeError(
            f"run {run_id!r} finished already; nothing to resume (train without --resume "
            "to start a new run)"
        )
    return dict(run.data.params)


def fetch_checkpoint(run_id: str, folder: Path) -> bool:
    """Make sure ``folder`` holds the run's latest checkpoint, from its artifacts if needed.

    Returns:
        True when a checkpoint is there to resume from; False when the run was
        interrupted before its first epoch ended (it then starts from the beginning).
    """
    if (folder / "training_metadata.json").exists():
        return True
    try:
        mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path=CHECKPOINT_ARTIFACTS, dst_path=str(folder.parent)
        )
    except (MlflowException, OSError):
        return False
    downloaded = folder.parent / CHECKPOINT_ARTIFACTS
    if downloaded.is_dir():
        downloaded.rename(folder)
    return (folder / "training_metadata.json").exists()


def history_from_run(client: MlflowClient, run_id: str) -> dict[str, list[float]]:
    """Per-epoch metrics of a run as Keras' ``History`` holds them (``epoch_loss`` → ``loss``).

    A resumed run's ``fit`` only knows the epochs after the checkpoint; the run's
    metrics hold all of them. An epoch logged twice (killed after logging, before its
    checkpoint) counts with its last value.
    """
    names = [k for k in client.get_run(run_id).data.metrics if k.startswith("epoch_")]
    history: dict[str, list[float]] = {}
    for name in names:
        by_step = {m.step: m.value for m in client.get_metric_history(run_id, name)}
        history[name.removeprefix("epoch_")] = [by_step[s] for s in sorted(by_step)]
    return history


def build_checkpoint_callback(folder: Path, stateful: list[Any], *, log_to_run: bool = True) -> Any:
    """A ``BackupAndRestore`` that also keeps the optimizer and ``stateful`` callbacks' state.

    Put it after ``stateful`` in the callback list: their ``on_train_begin`` resets their
    state, and this one's restores it afterwards.

    Args:
        folder: the local checkpoint folder (:func:`checkpoint_dir`).
        stateful: callbacks whose counters must survive a restart (EarlyStopping,
            ReduceLROnPlateau): the attributes ``wait``, ``best``, ``best_epoch``,
            ``cooldown_counter``, ``stopped_epoch`` and EarlyStopping's best weights.
        log_to_run: copy each checkpoint to the active run's ``checkpoints/`` artifacts.

    Returns:
        The Keras callback. It deletes the local folder when training ends.
    """
    import keras

    class TrainingCheckpoint(keras.callbacks.BackupAndRestore):
        def on_train_begin(self, logs: dict[str, float] | None = None) -> None:
            super().on_train_begin(logs)
            if (folder / _STATE_FILE).exists():
                _restore_state(self.model, folder, stateful)
                logger.info("resumed training after epoch %d", self.model._initial_epoch)

        def _save_model(self) -> None:
            super()._save_model()
            _save_state(self.model, folder, stateful)
            if log_to_run:
                mlflow.log_artifacts(str(folder), CHECKPOINT_ARTIFACTS)

    return TrainingCheckpoint(str(folder), save_freq="epoch", double_checkpoint=True)


def _save_state(model: Any, folder: Path, stateful: list[Any]) -> None:
    optimizer_values = [np.asarray(v) for v in model.optimizer.variables]
    np.savez(folder / _OPTIMIZER_FILE, *optimizer_values)
    states = []
    for index, callback in enumerate(stateful):
        state = {
            name: float(getattr(callback, name))
            for name in _CALLBACK_STATE
            if isinstance(getattr(callback, name, None), (int, float, np.number))
        }
        best_weights = getattr(callback, "best_weights", None)
        if best_weights is not None:
            np.savez(folder / _BEST_WEIGHTS_FILE.format(index=index), *best_weights)
            state["has_best_weights"] = 1.0
        states.append(state)
    (folder / _STATE_FILE).write_text(json.dumps(states))


def _restore_state(model: Any, folder: Path, stateful: list[Any]) -> None:
    with np.load(folder / _OPTIMIZER_FILE) as saved:
        values = [saved[f"arr_{i}"] for i in range(len(saved.files))]
    variables = model.optimizer.variables
    if len(values) == len(variables):
        for variable, value in zip(variables, values, strict=True):
            variable.assign(value)
    else:  # another optimizer layout: the weights still resume, the moments start afresh
        logger.warning("the checkpoint's optimizer state does not fit; starting it afresh")
    states = json.loads((folder / _STATE_FILE).read_text())
    for index, (callback, state) in enumerate(zip(stateful, states, strict=False)):
        for name, value in state.items():
            if name in _CALLBACK_STATE:
                kind = type(getattr(callback, name, value))
                setattr(callback, name, kind(value) if kind in (int, float) else value)
        if state.get("has_best_weights"):
            with np.load(folder / _BEST_WEIGHTS_FILE.format(index=index)) as saved:
                callback.best_weights = [saved[f"arr_{i}"] for i in range(len(saved.files))]

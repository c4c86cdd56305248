"""Training: data → network → calibration → reference profile → logged pyfunc → evaluation.

Runs log to ``MLFLOW_EXPERIMENT_NAME`` with the tag ``role=training``. Under
``mlflow run`` the run created by MLflow is used (``MLFLOW_RUN_ID``).
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd

from eye_model.config import CLASS_NAMES, EMBEDDING_DIMS, PROB_COLUMNS
from eye_model.data import (
    ImageSet,
    class_weights,
    load_dataset,
    make_tf_dataset,
    prepare_synthetic_data,
)
from eye_model.evaluate import (
    calibrated_probabilities,
    classification_metrics,
    expected_calibration_error,
    fit_temperature,
    plot_confusion_matrix,
    plot_reliability,
    plot_roc_curves,
    plot_training_curves,
    score_files,
)
from eye_model.inference import ModelConfig, NetworkRunner
from eye_model.pyfunc import log_model
from eye_model.runs import log_new_params
from eye_model.settings import load_settings

logger = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Parameters of the ``train`` entry point (the MLproject names).

    Attributes:
        data_dir: ImageFolder dataset root; empty → a generated synthetic set.
        synthetic_per_class: images per class of the synthetic set.
        image_size: side of the square network input, in pixels.
        backbone: ``small_cnn``, ``efficientnet_b0`` or ``mobilenet_v3_small``.
        weights: ``none``, ``imagenet`` or a weights file.
        epochs: most epochs to train (early stopping may end sooner).
        batch_size: images per training step.
        learning_rate: Adam's peak learning rate (after the warm-up): the whole small
            CNN's, or the new head's on a frozen pretrained backbone.
        seed: seed of data generation, split, initialisation and augmentation.
        register_as: register the model under this name; empty → do not register.
        epochs_frozen: pretrained backbones: epochs training only the new head.
        fine_tune_layers: pretrained backbones: how many of the backbone's last layers
            are then fine-tuned (BatchNorm excepted); 0 → the backbone stays frozen.
        fine_tune_learning_rate: pretrained backbones: peak learning rate of fine-tuning.
        augment: augment training images on the fly (flips, small rotations, field
            crops, exposure, contrast and colour jitter).
    """

    data_dir: str = ""
    synthetic_per_class: int = 300
    image_size: int = 224
    backbone: str = "small_cnn"
    weights: str = "none"
    epochs: int = 15
    batch_size: int = 32
    learning_rate: float = 2e-3
    seed: int = 42
    register_as: str = ""
    epochs_frozen: int = 5
    fine_tune_layers: int = 30
    fine_tune_learning_rate: float = 1e-5
    augment: bool = True


@dataclass
class TrainResult:
    """What a training run produced."""

    run_id: str
    model_uri: str
    metrics: dict[str, float]
    registered_version: str | None = None


def build_callbacks(calibration_pixels: np.ndarray) -> list[Any]:
    """Keras callbacks: BatchNorm recalibration before each validation, and MLflow logging.

    Args:
        calibration_pixels: un-augmented training images for the BatchNorm statistics.
    """
    import keras

    from eye_model.network import recalibrate_batchnorm

    class RecalibrateBatchNorm(keras.callbacks.Callback):
        """Validation (and so early stopping) judges the network as it will be served."""

        def on_test_begin(self, logs: dict[str, float] | None = None) -> None:
            recalibrate_batchnorm(self.model, calibration_pixels)

    class EpochLogger(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
            metrics = {f"epoch_{k}": float(v) for k, v in (logs or {}).items()}
            mlflow.log_metrics(metrics, step=epoch + 1)

    return [RecalibrateBatchNorm(), EpochLogger()]


def _logits_and_embeddings(network: Any, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from eye_model.network import build_embedding_model

    dual = build_embedding_model(network)
    logits, embedding = [], []
    for start in range(0, len(pixels), 64):
        out_logits, out_embedding = dual(
            pixels[start : start + 64].astype(np.float32), training=False
        )
        logits.append(np.asarray(out_logits))
        embedding.append(np.asarray(out_embedding))
    return np.concatenate(logits), np.concatenate(embedding)


def fit_embedding_projection(
    embedding: np.ndarray, dims: int = EMBEDDING_DIMS
) -> tuple[np.ndarray, np.ndarray]:
    """PCA of embeddings: the mean and the (width x dims) projection onto the top components."""
    mean = embedding.mean(axis=0)
    _, _, vt = np.linalg.svd(embedding - mean, full_matrices=False)
    projection = vt[: min(dims, vt.shape[0])].T
    if projection.shape[1] < dims:  # fewer samples than dims: pad with zero columns
        projection = np.pad(projection, ((0, 0), (0, dims - projection.shape[1])))
    return mean.astype(np.float32), projection.astype(np.float32)


def build_reference_profile(runner: NetworkRunner, images: ImageSet) -> pd.DataFrame:
    """Per-image profile of held-out data, in the columns the serving side logs.

    Columns: ``label``, ``predicted_class``, ``confidence``, ``prob_<class>``, the image
    statistics and ``emb_0`` … ``emb_7``. No pixels, no file names.
    """
    probabilities, embedding = [], []
    for start in range(0, len(images), 64):
        p, e = runner.run(images.pixels[start : start + 64])
        probabilities.append(p)
        embedding.append(e)
    probs = np.concatenate(probabilities)
    emb = np.concatenate(embedding)
    frame = pd.DataFrame(probs, columns=list(PROB_COLUMNS))
    frame.insert(0, "confidence", probs.max(axis=1))
    frame.insert(0, "predicted_class", np.asarray(CLASS_NAMES)[probs.argmax(axis=1)])
    frame.insert(0, "label", np.asarray(CLASS_NAMES)[images.labels])
    frame = pd.concat([frame, images.stats.reset_index(drop=True)], axis=1)
    for k in range(emb.shape[1]):
        frame[f"emb_{k}"] = emb[:, k]
    return frame


def _enough_reference(reference: pd.DataFrame, runner: NetworkRunner, dataset: Any) -> pd.DataFrame:
    """A reference profile large enough for the drift job, or a clear word that it is not.

    The profile is the validation split; when that is below the drift job's minimum
    (``DriftConfig.min_reference_records``), the test split (also held out) joins it. The
    row count is logged (``reference_profile_rows``); a profile still too small is tagged
    and warned about at training time, so nobody learns it from a silent drift run.
    """
    from eye_model.drift import DriftConfig

    minimum = DriftConfig().min_reference_records
    if len(reference) < minimum and len(dataset.test):
        test_profile = build_reference_profile(runner, dataset.test)
        reference = pd.concat([reference, test_profile], ignore_index=True)
    mlflow.log_metric("reference_profile_rows", float(len(reference)))
    if len(reference) < minimum:
        message = (
            f"the reference profile has {len(reference)} held-out images, fewer than the "
            f"{minimum} the drift job needs to test for drift: train on more images "
            "(at least 4 x that many across the splits)"
        )
        logger.warning(message)
        mlflow.set_tag("reference_profile_warning", message)
    return reference


def _log_figure(fig: Any, name: str) -> None:
    import matplotlib.pyplot as plt

    mlflow.log_figure(fig, name)
    plt.close(fig)


def run_training(config: TrainConfig) -> TrainResult:
    """Train, calibrate, profile, log and evaluate one model.

    Args:
        config: the entry point's parameters.

    Returns:
        The run id, the logged model's URI, the test metrics and the registered version.
    """
    from eye_model.augment import augment_dataset
    from eye_model.network import recalibrate_batchnorm
    from eye_model.recipe import build_and_compile, fit_phases, seed_training

    settings = load_settings()
    mlflow.set_tracking_uri(settings.tracking_uri)
    if not settings.mlflow_run_id:
        mlflow.set_experiment(settings.experiment_name)
    data_dir = config.data_dir.strip()
    synthetic = not data_dir
    if synthetic:
        data_dir = str(
            prepare_synthetic_data(
                config.synthetic_per_class, config.image_size, config.seed, settings.cache_dir
            )
        )
    dataset = load_dataset(data_dir, config.image_size, seed=config.seed)

    with mlflow.start_run() as run:
        mlflow.set_tags(
            {
                "role": "training",
                "data.source": "synthetic" if synthetic else "folder",
                "backbone": config.backbone,
            }
        )
        log_new_params(run.info.run_id, asdict(config))
        mlflow.log_params(
            {
                "data.train": len(dataset.train),
                "data.validation": len(dataset.validation),
                "data.test": len(dataset.test),
                "data.skipped_unreadable": dataset.skipped_unreadable,
                "data.skipped_duplicates": dataset.skipped_duplicates,
            }
        )
        mlflow.log_dict(dataset.description, "data_description.json")

        seed_training(config.seed)
        train_ds = augment_dataset(
            make_tf_dataset(
                dataset.train, batch_size=config.batch_size, training=True, seed=config.seed
            ),
            seed=config.seed,
            enabled=config.augment,
        )
        val_ds = make_tf_dataset(dataset.validation, batch_size=64, training=False)
        steps_per_epoch = -(-len(dataset.train) // config.batch_size)
        network = build_and_compile(config, steps_per_epoch)
        start = time.perf_counter()
        history = fit_phases(
            network,
            train_ds,
            val_ds,
            config,
            steps_per_epoch=steps_per_epoch,
            callbacks=build_callbacks(dataset.train.pixels[:256]),
            class_weight=class_weights(dataset.train.labels),
        )
        train_seconds = time.perf_counter() - start
        # The best weights are restored; give them statistics of the whole training split.
        recalibrate_batchnorm(network, dataset.train.pixels)
        epochs_run = len(history["loss"])
        mlflow.log_metrics(
            {
                "train_seconds": train_seconds,
                "epochs_run": epochs_run,
                "train_images_per_second": len(dataset.train) * epochs_run / train_seconds,
            }
        )
        _log_figure(plot_training_curves(history), "plots/training_curves.png")

        # Calibration on the validation split, judged on the test split.
        val_logits, val_embedding = _logits_and_embeddings(network, dataset.validation.pixels)
        temperature = fit_temperature(val_logits, dataset.validation.labels)
        test_logits, _ = _logits_and_embeddings(network, dataset.test.pixels)
        before = calibrated_probabilities(test_logits, 1.0)
        after = calibrated_probabilities(test_logits, temperature)
        mlflow.log_metrics(
            {
                "temperature": temperature,
                "test_ece_uncalibrated": expected_calibration_error(before, dataset.test.labels),
                "test_ece": expected_calibration_error(after, dataset.test.labels),
            }
        )
        _log_figure(plot_reliability(dataset.test.labels, before, after), "plots/reliability.png")

        mean, projection = fit_embedding_projection(val_embedding)
        model_config = ModelConfig(
            image_size=config.image_size,
            temperature=temperature,
            backbone=config.backbone,
            embedding_mean=mean.tolist(),
            embedding_projection=projection.tolist(),
            extra={"data": dataset.description, "synthetic": synthetic},
        )
        runner = NetworkRunner(network, model_config)
        reference = build_reference_profile(runner, dataset.validation)
        reference = _enough_reference(reference, runner, dataset)
        with tempfile.TemporaryDirectory() as tmp:
            reference.to_parquet(Path(tmp) / "reference_profile.parquet", index=False)
            mlflow.log_artifact(str(Path(tmp) / "reference_profile.parquet"))
        info = log_model(network, model_config, reference_profile=reference)
        model_uri = f"runs:/{run.info.run_id}/model"

        # Evaluation of the logged model, end to end from the image files.
        scored = score_files(info.model_uri, dataset.test.sources)
        probabilities = scored[list(PROB_COLUMNS)].to_numpy(dtype=float)
        metrics = classification_metrics(dataset.test.labels, probabilities)
        metrics["test_ece"] = expected_calibration_error(probabilities, dataset.test.labels)
        mlflow.log_metrics(metrics)
        labels_text = np.asarray(CLASS_NAMES)[dataset.test.labels]
        mlflow.models.evaluate(
            data=pd.DataFrame({"label": labels_text, "prediction": scored["predicted_class"]}),
            targets="label",
            predictions="prediction",
            model_type="classifier",
        )
        predicted = probabilities.argmax(axis=1)
        _log_figure(
            plot_confusion_matrix(dataset.test.labels, predicted), "plots/confusion_matrix.png"
        )
        _log_figure(plot_roc_curves(dataset.test.labels, probabilities), "plots/roc_curves.png")

        registered = None
        if config.register_as.strip():
            from eye_model.registry import register_model

            registered = register_model(model_uri, config.register_as.strip()).version
    return TrainResult(run.info.run_id, model_uri, metrics, registered)

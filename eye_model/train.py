"""Training: data → network → calibration → reference profile → logged pyfunc → evaluation.

Runs log to ``MLFLOW_EXPERIMENT_NAME`` with the tag ``role=training``. Under
``mlflow run`` the run created by MLflow is used (``MLFLOW_RUN_ID``).
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow import MlflowClient

from eye_model.calibration import build_harder_split
from eye_model.checkpoints import (
    build_checkpoint_callback,
    checkpoint_dir,
    fetch_checkpoint,
    history_from_run,
    resumable_params,
)
from eye_model.config import CLASS_NAMES, EMBEDDING_DIMS, PROB_COLUMNS
from eye_model.data import (
    DECODE_FAILURES,
    ImageSet,
    class_weights,
    decode_all,
    iter_decoded_batches,
    load_dataset,
    make_tf_dataset,
    prepare_synthetic_data,
)
from eye_model.distributed import TrainingPlacement, training_placement
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
from eye_model.ood import OOD_THRESHOLD, fit_ood_statistics
from eye_model.pyfunc import log_model
from eye_model.runs import log_new_params
from eye_model.setting_values import parse_bool
from eye_model.settings import load_settings

logger = logging.getLogger(__name__)

#: Training images whose BatchNorm statistics the final network keeps: a bounded sample, so
#: memory does not grow with the training set (the mean of 1,024 images is within a few
#: per cent of the whole split's).
BATCHNORM_SAMPLE = 1024

#: Training images the BatchNorm recalibration before each validation uses.
VALIDATION_BATCHNORM_SAMPLE = 256


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
        folds: k-fold cross-validation as nested runs before the final fit; 0 → off.
        resume: id of an interrupted training run to continue (its own parameters are
            used); empty → a new run.
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
    epochs: int = 25
    batch_size: int = 32
    learning_rate: float = 2e-3
    seed: int = 42
    register_as: str = ""
    folds: int = 0
    resume: str = ""
    epochs_frozen: int = 5
    fine_tune_layers: int = 30
    fine_tune_learning_rate: float = 1e-5
    augment: bool = True


def config_of_run(run_id: str, params: dict[str, str]) -> TrainConfig:
    """The configuration a run was started with, from its logged parameters.

    Parameters the run does not hold (empty ones are not logged) take their defaults.
    """
    values: dict[str, Any] = {}
    for name, default in asdict(TrainConfig()).items():
        text = params.get(name, "")
        if text not in ("", "''"):  # `mlflow run` logs an empty parameter as ''
            # ... and MLproject floats as given: "15" or "15.0".
            if isinstance(default, bool):
                values[name] = parse_bool(text, name=name)
            elif isinstance(default, int):
                values[name] = int(float(text))
            else:
                values[name] = type(default)(text)
    return replace(TrainConfig(**values), resume=run_id)


@dataclass
class TrainResult:
    """What a training run produced."""

    run_id: str
    model_uri: str
    metrics: dict[str, float]
    registered_version: str | None = None


def build_callbacks(calibration_pixels: np.ndarray, *, log_epochs: bool = True) -> list[Any]:
    """Keras callbacks: BatchNorm recalibration before each validation, and MLflow logging.

    Args:
        calibration_pixels: un-augmented training images for the BatchNorm statistics.
        log_epochs: log each epoch's metrics to the active MLflow run.
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

    return [RecalibrateBatchNorm(), EpochLogger()] if log_epochs else [RecalibrateBatchNorm()]


@dataclass
class FitResult:
    """A fitted network (float32, on one device), its Keras history and the fit's duration."""

    network: Any
    history: dict[str, list[float]]
    seconds: float


def fit_network(
    config: TrainConfig,
    train: ImageSet,
    validation: ImageSet,
    *,
    placement: TrainingPlacement | None = None,
    log_epochs: bool = True,
    callbacks: Sequence[Any] = (),
    checkpoints: Path | None = None,
) -> FitResult:
    """Build, compile and fit the network of ``config`` (the recipe every caller shares).

    Training, each cross-validation fold and each tuning trial fit through here.

    Args:
        config: backbone, weights, image size, epochs, batch size, learning rate, seed.
        train: the images to fit.
        validation: the images that judge each epoch (early stopping).
        placement: the distribution strategy; None → this process's placement.
        log_epochs: log each epoch's metrics to the active MLflow run.
        callbacks: more Keras callbacks (e.g. a tuning trial's pruning).
        checkpoints: save a checkpoint there after every epoch, and start from the one
            there (:mod:`eye_model.checkpoints`); None: no checkpoints.

    Returns:
        The network with the best weights and BatchNorm statistics of all of ``train``.
    """
    from eye_model.augment import augment_dataset
    from eye_model.network import build_network, recalibrate_batchnorm
    from eye_model.recipe import build_and_compile, fit_phases, seed_training

    placement = placement or training_placement()

    def build() -> Any:
        return build_network(config.backbone, config.image_size, config.weights)

    seed_training(config.seed)
    steps_per_epoch = max(1, -(-len(train) // config.batch_size))
    with placement.scope():
        network = build_and_compile(config, steps_per_epoch)
    placement.prepare(network)
    train_ds = augment_dataset(
        make_tf_dataset(train, batch_size=config.batch_size, training=True, seed=config.seed),
        seed=config.seed,
        enabled=config.augment,
    )
    val_ds = make_tf_dataset(validation, batch_size=64, training=False)
    calibration = decode_all(train.sample(VALIDATION_BATCHNORM_SAMPLE, config.seed))
    start = time.perf_counter()
    history = fit_phases(
        network,
        train_ds,
        val_ds,
        config,
        steps_per_epoch=steps_per_epoch,
        callbacks=[*build_callbacks(calibration, log_epochs=log_epochs), *callbacks],
        class_weight=class_weights(train.labels),
        checkpoint=(
            None
            if checkpoints is None
            else lambda stateful: build_checkpoint_callback(checkpoints, stateful)
        ),
    )
    seconds = time.perf_counter() - start
    network = placement.single_device(network, build)
    # The best weights are restored; give them statistics of the training split.
    recalibrate_batchnorm(network, decode_all(train.sample(BATCHNORM_SAMPLE, config.seed + 1)))
    return FitResult(network, history, seconds)


def _logits_and_embeddings(
    network: Any,
    images: ImageSet,
    transform: Callable[[np.ndarray], np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Logits, embeddings and labels of a split, decoded batch by batch (failures left out).

    ``transform`` changes each decoded batch's pixels first (e.g. the harder split's shifts).
    """
    from eye_model.network import build_embedding_model

    dual = build_embedding_model(network)
    logits, embedding, labels = [], [], []
    for batch in iter_decoded_batches(images):
        pixels = batch.pixels if transform is None else transform(batch.pixels)
        out_logits, out_embedding = dual(pixels.astype(np.float32), training=False)
        logits.append(np.asarray(out_logits))
        embedding.append(np.asarray(out_embedding))
        labels.append(batch.labels)
    return np.concatenate(logits), np.concatenate(embedding), np.concatenate(labels)


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
    statistics, ``emb_0`` … ``emb_7`` and ``ood_score`` (NaN for a model without its
    out-of-distribution statistics). No pixels, no file names. The split is decoded batch
    by batch; a file that fails to decode has no row.
    """
    probabilities, embedding, ood, labels, stats = [], [], [], [], []
    for batch in iter_decoded_batches(images, with_stats=True):
        p, e, o = runner.run(batch.pixels)
        probabilities.append(p)
        embedding.append(e)
        ood.append(np.full(len(p), np.nan) if o is None else o)
        labels.append(batch.labels)
        stats.append(batch.stats)
    probs = np.concatenate(probabilities)
    emb = np.concatenate(embedding)
    frame = pd.DataFrame(probs, columns=list(PROB_COLUMNS))
    frame.insert(0, "confidence", probs.max(axis=1))
    frame.insert(0, "predicted_class", np.asarray(CLASS_NAMES)[probs.argmax(axis=1)])
    frame.insert(0, "label", np.asarray(CLASS_NAMES)[np.concatenate(labels)])
    frame = pd.concat([frame, pd.concat(stats, ignore_index=True)], axis=1)
    for k in range(emb.shape[1]):
        frame[f"emb_{k}"] = emb[:, k]
    frame["ood_score"] = np.concatenate(ood)
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

    Raises:
        ResumeError: ``config.resume`` names no run that can be resumed (checked before
            TensorFlow loads).
    """
    settings = load_settings()
    mlflow.set_tracking_uri(settings.tracking_uri)
    resume = config.resume.strip()
    if resume:  # the run's own parameters, so it continues as it started (before TF loads)
        config = config_of_run(resume, resumable_params(MlflowClient(), resume))
    # Then: a cluster's strategy must exist before other TensorFlow work.
    placement = training_placement(settings.tf_config)
    if config.folds and placement.kind == "multi_worker":
        raise ValueError("folds: cross-validation runs on one machine; unset TF_CONFIG for it")
    if resume and settings.mlflow_run_id and settings.mlflow_run_id != resume:
        # `mlflow run -P resume=...` opened a run of its own: point it at the real one.
        MlflowClient().set_tag(settings.mlflow_run_id, "resumed_run_id", resume)
    elif not resume and not settings.mlflow_run_id:
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
    if not placement.is_chief:
        # A worker of a cluster: the same fit in step with the chief, which logs it.
        fit_network(
            config, dataset.train, dataset.validation, placement=placement, log_epochs=False
        )
        return TrainResult(run_id="", model_uri="", metrics={})

    with mlflow.start_run(run_id=resume or None) as run:
        mlflow.set_tags(
            {
                "role": "training",
                "data.source": "synthetic" if synthetic else "folder",
                "backbone": config.backbone,
                **placement.tags(),
            }
        )
        log_new_params(run.info.run_id, {**asdict(config), "resume": ""})
        log_new_params(
            run.info.run_id,
            {
                "data.train": len(dataset.train),
                "data.validation": len(dataset.validation),
                "data.test": len(dataset.test),
                "data.skipped_unreadable": dataset.skipped_unreadable,
                "data.skipped_duplicates": dataset.skipped_duplicates,
            },
        )
        mlflow.log_dict(dataset.description, "data_description.json")
        if config.folds:
            from eye_model.crossval import concat_image_sets, run_cross_validation

            everything = concat_image_sets([dataset.train, dataset.validation, dataset.test])
            run_cross_validation(
                everything,
                config.folds,
                config.seed,
                lambda train, validation, seed: (
                    fit_network(replace(config, seed=seed), train, validation).network
                ),
            )

        checkpoints = checkpoint_dir(settings.cache_dir, run.info.run_id)
        if resume and not fetch_checkpoint(resume, checkpoints):
            logger.warning("run %s has no checkpoint yet; training from the start", resume)
        fitted = fit_network(
            config,
            dataset.train,
            dataset.validation,
            placement=placement,
            checkpoints=checkpoints,
        )
        network, train_seconds = fitted.network, fitted.seconds
        epochs_here = len(fitted.history.get("loss", []))
        # A resumed fit knows only its own epochs; the run's metrics hold all of them.
        curves = history_from_run(MlflowClient(), run.info.run_id) if resume else fitted.history
        mlflow.log_metrics(
            {
                "train_seconds": train_seconds,
                "epochs_run": len(curves.get("loss", [])),
                "train_images_per_second": len(dataset.train) * epochs_here / train_seconds,
            }
        )
        _log_figure(plot_training_curves(curves), "plots/training_curves.png")

        # Calibration on the validation split and a camera-shifted copy of it (a harder
        # split: confidence has to hold off the training distribution), judged on the test split.
        val_logits, val_embedding, val_labels = _logits_and_embeddings(network, dataset.validation)
        hard_logits, _, hard_labels = _logits_and_embeddings(
            network,
            dataset.validation,
            transform=lambda pixels: build_harder_split(pixels, config.seed),
        )
        temperature = fit_temperature(
            np.concatenate([val_logits, hard_logits]), np.concatenate([val_labels, hard_labels])
        )
        mlflow.log_metric(
            "validation_shifted_accuracy",
            float((hard_logits.argmax(axis=1) == hard_labels).mean()),
        )
        test_logits, _, test_labels = _logits_and_embeddings(network, dataset.test)
        before = calibrated_probabilities(test_logits, 1.0)
        after = calibrated_probabilities(test_logits, temperature)
        mlflow.log_metrics(
            {
                "temperature": temperature,
                "test_ece_uncalibrated": expected_calibration_error(before, test_labels),
                "test_ece": expected_calibration_error(after, test_labels),
                "data_skipped_undecodable": float(len(DECODE_FAILURES)),
            }
        )
        _log_figure(plot_reliability(test_labels, before, after), "plots/reliability.png")

        mean, projection = fit_embedding_projection(val_embedding)
        # Out-of-distribution statistics: class means and covariance of the training split,
        # the normalisation (ood_score 1.0 = 99th percentile) of the validation split.
        _, train_embedding, train_labels = _logits_and_embeddings(network, dataset.train)
        ood = fit_ood_statistics(
            train_embedding, train_labels, val_logits, val_embedding, len(CLASS_NAMES)
        )
        model_config = ModelConfig(
            image_size=config.image_size,
            temperature=temperature,
            backbone=config.backbone,
            embedding_mean=mean.tolist(),
            embedding_projection=projection.tolist(),
            ood=ood.to_dict(),
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
        # Share of the (held-out) test split flagged as unlike the training data: about 0.01.
        metrics["test_ood_share"] = float(
            (scored["ood_score"].astype(float) >= OOD_THRESHOLD).mean()
        )
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

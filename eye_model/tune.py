"""Hyperparameter search: an Optuna study whose trials are nested MLflow runs.

The parent run (tag ``role=tuning``) holds the search's settings and, at the end, the
best trial's parameters (``best_<name>``), its value (``best_val_macro_f1``) and
``best_params.json``. Each trial is a nested run (tag ``role=tuning_trial``) holding
its parameters, its per-epoch curves and ``val_macro_f1``. A trial reports the
validation macro-F1 after every epoch; Optuna's ``MedianPruner`` stops a trial whose
figure falls below the median of the earlier trials at the same epoch (tag
``tuning.state=pruned``).

The search covers the learning rate (log-uniform), the batch size, the backbone and,
when the training recipe has the option, the augmentation strength.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import asdict, dataclass
from typing import Any

import mlflow

from eye_model.crossval import predict_logits
from eye_model.data import ImageSet, load_dataset, prepare_synthetic_data
from eye_model.evaluate import calibrated_probabilities, classification_metrics
from eye_model.runs import log_new_params
from eye_model.settings import load_settings
from eye_model.train import TrainConfig, fit_network

logger = logging.getLogger(__name__)

#: The objective every trial reports and the study maximises.
OBJECTIVE = "val_macro_f1"
#: The TrainConfig field of the augmentation strength, searched when the recipe has it.
AUGMENT_FIELD = "augment"


@dataclass
class TuneConfig:
    """Parameters of the ``tune`` entry point (the MLproject names).

    Attributes:
        data_dir: ImageFolder dataset root; empty → a generated synthetic set.
        synthetic_per_class: images per class of the synthetic set.
        image_size: side of the square network input, in pixels.
        epochs: most epochs of each trial.
        trials: most trials of the study.
        timeout_minutes: stop starting trials after this long; 0 → no limit.
        backbones: comma-separated backbones to search over.
        batch_sizes: comma-separated batch sizes to search over.
        learning_rate_min: lower end of the learning rate's log-uniform range.
        learning_rate_max: upper end of that range.
        weights: ``none``, ``imagenet`` or a weights file, for every trial.
        seed: seed of the data split, the sampler and each trial's training.
    """

    data_dir: str = ""
    synthetic_per_class: int = 300
    image_size: int = 224
    epochs: int = 10
    trials: int = 20
    timeout_minutes: float = 0.0
    backbones: str = "small_cnn,mobilenet_v3_small,efficientnet_b0"
    batch_sizes: str = "16,32,64"
    learning_rate_min: float = 1e-4
    learning_rate_max: float = 1e-2
    weights: str = "none"
    seed: int = 42


@dataclass
class TuneResult:
    """What a study found."""

    run_id: str
    best_params: dict[str, Any]
    best_value: float
    trials_complete: int
    trials_pruned: int


def _choices(text: str, name: str, kind: type) -> list[Any]:
    values = [kind(v.strip()) for v in text.split(",") if v.strip()]
    if not values:
        raise ValueError(f"{name} is empty; give one value or more, separated by commas")
    return values


def suggest_params(trial: Any, config: TuneConfig) -> dict[str, Any]:
    """Draw one trial's training parameters from the search space.

    Args:
        trial: the Optuna trial.
        config: the search's ranges and choices.

    Returns:
        TrainConfig field → value.
    """
    from eye_model.network import BACKBONES

    backbones = _choices(config.backbones, "backbones", str)
    unknown = sorted(set(backbones) - set(BACKBONES))
    if unknown:
        raise ValueError(f"backbones: {unknown} unknown; choose from {', '.join(BACKBONES)}")
    if not 0 < config.learning_rate_min <= config.learning_rate_max:
        raise ValueError("learning_rate_min must be above 0 and at most learning_rate_max")
    params: dict[str, Any] = {
        "learning_rate": trial.suggest_float(
            "learning_rate", config.learning_rate_min, config.learning_rate_max, log=True
        ),
        "batch_size": trial.suggest_categorical(
            "batch_size", _choices(config.batch_sizes, "batch_sizes", int)
        ),
        "backbone": trial.suggest_categorical("backbone", backbones),
    }
    params.update(_suggest_augmentation(trial))
    return params


def _suggest_augmentation(trial: Any) -> dict[str, Any]:
    """The augmentation strength, once the training recipe has an ``augment`` option.

    A float option is searched over 0-1; a switch over on/off. Without the option the
    search leaves augmentation as the recipe has it.
    """
    field = next((f for f in dataclasses.fields(TrainConfig) if f.name == AUGMENT_FIELD), None)
    if field is None:
        return {}
    if isinstance(field.default, bool):
        return {AUGMENT_FIELD: trial.suggest_categorical(AUGMENT_FIELD, [True, False])}
    if isinstance(field.default, float):
        return {AUGMENT_FIELD: trial.suggest_float(AUGMENT_FIELD, 0.0, 1.0)}
    return {}


def validation_macro_f1(network: Any, validation: ImageSet) -> float:
    """Macro-F1 of the network on the validation split (inference mode)."""
    logits, labels = predict_logits(network, validation)
    probabilities = calibrated_probabilities(logits, 1.0)
    return classification_metrics(labels, probabilities, prefix="")["macro_f1"]


def pruner() -> Any:
    """Optuna's median pruner: two full trials set the median; trials are judged from epoch 2.

    Steps are epochs counted from 1, and Optuna judges no step below ``n_warmup_steps``:
    the first epoch is too noisy to stop a trial on.
    """
    import optuna

    return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=2)


def pruning_reporter(trial: Any, validation: ImageSet) -> Any:
    """A Keras callback: report the validation macro-F1 each epoch; stop a pruned trial."""
    import keras

    class PruningReporter(keras.callbacks.Callback):
        pruned_at: int | None = None

        def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
            value = validation_macro_f1(self.model, validation)
            mlflow.log_metric(f"epoch_{OBJECTIVE}", value, step=epoch + 1)
            trial.report(value, epoch + 1)
            if trial.should_prune():
                self.pruned_at = epoch + 1
                self.model.stop_training = True

    return PruningReporter()


def run_tuning(config: TuneConfig) -> TuneResult:
    """Search the hyperparameters: one parent run, one nested run per trial.

    Args:
        config: the entry point's parameters.

    Returns:
        The parent run, the best parameters and value, and the trial counts.

    Raises:
        ValueError: for a bad search space, or when no trial completed.
    """
    import optuna

    settings = load_settings()
    mlflow.set_tracking_uri(settings.tracking_uri)
    if not settings.mlflow_run_id:
        mlflow.set_experiment(settings.experiment_name)
    data_dir = config.data_dir.strip()
    if not data_dir:
        data_dir = str(
            prepare_synthetic_data(
                config.synthetic_per_class, config.image_size, config.seed, settings.cache_dir
            )
        )
    dataset = load_dataset(data_dir, config.image_size, seed=config.seed)
    base = TrainConfig(
        data_dir=config.data_dir,
        image_size=config.image_size,
        epochs=config.epochs,
        weights=config.weights,
        seed=config.seed,
    )
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=config.seed),
        pruner=pruner(),
    )

    def objective(trial: optuna.Trial) -> float:
        params = suggest_params(trial, config)
        reporter = pruning_reporter(trial, dataset.validation)
        with mlflow.start_run(run_name=f"trial-{trial.number}", nested=True):
            mlflow.set_tags({"role": "tuning_trial", "tuning.trial": str(trial.number)})
            mlflow.log_params(params)
            fitted = fit_network(
                dataclasses.replace(base, **params),
                dataset.train,
                dataset.validation,
                callbacks=[reporter],
            )
            value = validation_macro_f1(fitted.network, dataset.validation)
            mlflow.log_metrics({OBJECTIVE: value, "epochs_run": len(fitted.history["loss"])})
            state = "pruned" if reporter.pruned_at else "complete"
            mlflow.set_tag("tuning.state", state)
        if reporter.pruned_at:
            raise optuna.TrialPruned(f"pruned after epoch {reporter.pruned_at}")
        return value

    with mlflow.start_run() as run:
        mlflow.set_tags(
            {"role": "tuning", "data.source": "folder" if config.data_dir else "synthetic"}
        )
        log_new_params(run.info.run_id, asdict(config))
        study.optimize(
            objective,
            n_trials=config.trials,
            timeout=config.timeout_minutes * 60 if config.timeout_minutes > 0 else None,
        )
        states = [t.state for t in study.trials]
        complete = states.count(optuna.trial.TrialState.COMPLETE)
        pruned = states.count(optuna.trial.TrialState.PRUNED)
        mlflow.log_metrics({"trials_complete": complete, "trials_pruned": pruned})
        if not complete:
            raise ValueError(
                f"no trial completed ({pruned} pruned of {len(states)}); allow more trials "
                "or time (trials, timeout_minutes)"
            )
        best = study.best_trial
        best_value = float(best.values[0])
        mlflow.log_params({f"best_{k}": v for k, v in best.params.items()})
        mlflow.log_metric(f"best_{OBJECTIVE}", best_value)
        mlflow.set_tag("tuning.best_trial", str(best.number))
        mlflow.log_dict(
            {"params": best.params, OBJECTIVE: best_value, "trial": best.number},
            "best_params.json",
        )
    logger.info("best %s %.3f with %s", OBJECTIVE, best_value, best.params)
    return TuneResult(run.info.run_id, dict(best.params), best_value, complete, pruned)

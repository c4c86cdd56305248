"""The training recipe: seeding, the network, its optimiser schedule, and the fit phases.

``train.py`` (data, orchestration, logging) calls three functions, in this order:

1. :func:`seed_training` before anything random is built;
2. :func:`build_and_compile`: the network, its backbone frozen for transfer learning;
3. :func:`fit_phases`: the fit, in one phase (``small_cnn``) or two (a
   ``keras.applications`` backbone: the new head on the frozen backbone, then the top
   ``fine_tune_layers`` of the backbone at ``fine_tune_learning_rate``).

Why the schedule: a constant learning rate of 2e-3 from step one sometimes threw the
small CNN off in its first epochs and early stopping then kept the epoch-1 weights
(test macro-F1 0.77 in one run, 0.99 in the next). Here every phase warms up linearly
and then decays along a cosine, and early stopping only starts watching once the
warm-up and the first part of the decay are over, so the weights it keeps come from
after the loss has settled.

This module knows nothing about MLflow.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from eye_model.network import SmoothedSparseCrossentropy, build_network, resolve_weights

#: BatchNormalization layers stay in inference mode in a pretrained backbone: their
#: statistics come from the pretraining data, and re-estimating them from batches of 32
#: fundus photos would wreck the features they normalise.
_BATCH_NORM_TYPES = ("BatchNormalization",)

#: Epochs of linear warm-up at the start of each phase (at most this, and at most a
#: third of the phase).
WARMUP_EPOCHS = 2
#: Epochs without a better validation loss before early stopping ends a phase.
PATIENCE = 4
#: The schedule starts (and ends) at this fraction of the phase's peak learning rate.
LR_FLOOR_FRACTION = 0.05


class RecipeConfig(Protocol):
    """The training parameters the recipe reads (``train.TrainConfig`` has them all)."""

    backbone: str
    image_size: int
    weights: str
    epochs: int
    learning_rate: float
    seed: int
    epochs_frozen: int
    fine_tune_layers: int
    fine_tune_learning_rate: float


def seed_training(seed: int, *, deterministic: bool = True) -> None:
    """Seed Python, NumPy and TensorFlow, and make TensorFlow's kernels deterministic.

    Op determinism is process-wide and cannot be switched off again; on CPU it costs
    little (``scripts/benchmark_training_stability.py --determinism-cost`` measures it).

    Args:
        seed: the training seed.
        deterministic: also call ``tf.config.experimental.enable_op_determinism``.
    """
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    if deterministic:
        tf.config.experimental.enable_op_determinism()


def validate_recipe(config: RecipeConfig) -> None:
    """Raise a ValueError naming the parameter and the fix for values the recipe cannot use."""
    checks = [
        (config.epochs >= 1, f"epochs={config.epochs} must be at least 1"),
        (config.learning_rate > 0, f"learning_rate={config.learning_rate} must be above 0"),
        (config.epochs_frozen >= 0, f"epochs_frozen={config.epochs_frozen} must be 0 or more"),
        (
            config.fine_tune_layers >= 0,
            f"fine_tune_layers={config.fine_tune_layers} must be 0 or more (0: no fine-tuning)",
        ),
        (
            config.fine_tune_learning_rate > 0,
            f"fine_tune_learning_rate={config.fine_tune_learning_rate} must be above 0; "
            "use fine_tune_layers=0 to skip fine-tuning",
        ),
    ]
    for ok, message in checks:
        if not ok:
            raise ValueError(message)


def find_backbone(network: Any) -> Any | None:
    """The pretrained ``keras.applications`` model nested in ``network``, or None (small CNN)."""
    import keras

    nested = [layer for layer in network.layers if isinstance(layer, keras.Model)]
    return nested[0] if nested else None


def is_batch_norm(layer: Any) -> bool:
    """True for BatchNormalization layers (kept frozen, in inference mode, in a backbone)."""
    return type(layer).__name__ in _BATCH_NORM_TYPES


def freeze_backbone(backbone: Any) -> None:
    """Freeze every layer of ``backbone`` (phase 1: only the new head trains)."""
    backbone.trainable = False


def unfreeze_top_layers(backbone: Any, count: int) -> list[str]:
    """Unfreeze the last ``count`` layers of ``backbone``, BatchNorm layers excepted.

    Frozen BatchNorm layers run in inference mode in Keras 3 (``training and
    self.trainable`` decides), so their moving statistics stay as pretrained.

    Args:
        backbone: the nested ``keras.applications`` model.
        count: how many of its last layers to unfreeze (0: none).

    Returns:
        The names of the layers now trainable that hold weights.
    """
    backbone.trainable = True
    top = (
        {id(layer) for layer in backbone.layers[len(backbone.layers) - count :]} if count else set()
    )
    unfrozen = []
    for layer in backbone.layers:
        layer.trainable = id(layer) in top and not is_batch_norm(layer)
        if layer.trainable and layer.weights:
            unfrozen.append(layer.name)
    return unfrozen


def learning_rate_schedule(peak: float, epochs: int, steps_per_epoch: int) -> Any:
    """Linear warm-up to ``peak`` then cosine decay, over ``epochs`` epochs.

    Args:
        peak: the learning rate reached at the end of the warm-up.
        epochs: epochs of the phase.
        steps_per_epoch: optimiser steps per epoch.

    Returns:
        A ``keras.optimizers.schedules.CosineDecay`` (per step).
    """
    import keras

    steps_per_epoch = max(1, steps_per_epoch)
    warmup_epochs = min(WARMUP_EPOCHS, epochs // 3)
    warmup_steps = warmup_epochs * steps_per_epoch
    decay_steps = max(1, (epochs - warmup_epochs) * steps_per_epoch)
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=peak * LR_FLOOR_FRACTION if warmup_steps else peak,
        decay_steps=decay_steps,
        alpha=LR_FLOOR_FRACTION,
        warmup_target=peak if warmup_steps else None,
        warmup_steps=warmup_steps,
    )


def compile_phase(network: Any, peak_learning_rate: float, epochs: int, steps: int) -> None:
    """Compile ``network`` for one phase: Adam on the warm-up + cosine schedule.

    Recompiling is what makes a change of the ``trainable`` flags take effect.
    """
    import keras

    network.compile(
        optimizer=keras.optimizers.Adam(learning_rate_schedule(peak_learning_rate, epochs, steps)),
        loss=SmoothedSparseCrossentropy(),
        metrics=["accuracy"],
    )


def build_and_compile(config: RecipeConfig, steps_per_epoch: int) -> Any:
    """Build the network named by ``config.backbone`` and compile it for its first phase.

    Args:
        config: the training parameters.
        steps_per_epoch: optimiser steps per epoch (batches of the training split).

    Returns:
        The compiled Keras network; a pretrained backbone comes frozen when the
        recipe has a frozen phase (``epochs_frozen`` > 0).
    """
    validate_recipe(config)
    network = build_network(config.backbone, config.image_size, config.weights)
    backbone = find_backbone(network)
    phases = plan_phases(config)
    if backbone is not None and is_pretrained(config):
        for layer in backbone.layers:
            if is_batch_norm(layer):
                layer.trainable = False
        if phases[0].name == "frozen":
            freeze_backbone(backbone)
        else:
            unfreeze_top_layers(backbone, config.fine_tune_layers)
    first = phases[0]
    compile_phase(network, first.learning_rate, first.epochs, steps_per_epoch)
    return network


@dataclass(frozen=True)
class Phase:
    """One ``fit`` call: its name, epochs and peak learning rate."""

    name: str
    epochs: int
    learning_rate: float

    @property
    def early_stopping_from(self) -> int:
        """Epoch within the phase from which early stopping may stop and keep weights.

        Half-way through the phase (after the warm-up, when the cosine has come down to
        half the peak), and never later than its last epoch.
        """
        return min(self.epochs - 1, max(min(WARMUP_EPOCHS, self.epochs // 3), self.epochs // 2))


def is_pretrained(config: RecipeConfig) -> bool:
    """True for a ``keras.applications`` backbone with ImageNet weights or a weights file."""
    return config.backbone != "small_cnn" and resolve_weights(config.weights) is not None


def plan_phases(config: RecipeConfig) -> list[Phase]:
    """The phases the recipe will run.

    The small CNN, and a backbone trained from random weights (``weights=none``), train
    in one phase of ``epochs`` at ``learning_rate``, every layer trainable. A pretrained
    backbone trains the head for ``epochs_frozen`` epochs at ``learning_rate`` with the
    backbone frozen, then the top ``fine_tune_layers`` for the remaining epochs at
    ``fine_tune_learning_rate``. ``epochs_frozen=0`` fine-tunes from the start;
    ``fine_tune_layers=0`` (or ``epochs_frozen >= epochs``) keeps the backbone frozen.
    """
    if not is_pretrained(config):
        return [Phase("full", config.epochs, config.learning_rate)]
    frozen = min(config.epochs_frozen, config.epochs)
    if config.fine_tune_layers == 0:
        return [Phase("frozen", config.epochs, config.learning_rate)]
    phases = []
    if frozen:
        phases.append(Phase("frozen", frozen, config.learning_rate))
    if config.epochs - frozen > 0:
        phases.append(Phase("fine_tune", config.epochs - frozen, config.fine_tune_learning_rate))
    return phases


def fit_phases(
    network: Any,
    train_ds: Any,
    val_ds: Any,
    config: RecipeConfig,
    *,
    steps_per_epoch: int,
    callbacks: list[Any] | None = None,
    class_weight: dict[int, float] | None = None,
    verbose: int = 2,
    checkpoint: Callable[[list[Any]], Any] | None = None,
) -> dict[str, list[float]]:
    """Fit ``network`` (from :func:`build_and_compile`) phase by phase.

    Epoch numbers run on across phases (phase 2 starts where phase 1 ended), so
    per-epoch callbacks (MLflow logging) see one continuous history. Each phase has
    its own early stopping, which restores the phase's best weights seen after its
    warm-up (:attr:`Phase.early_stopping_from`).

    Args:
        network: the compiled network.
        train_ds: batched training ``tf.data.Dataset`` (augmented if wanted).
        val_ds: batched validation dataset.
        config: the training parameters.
        steps_per_epoch: batches per training epoch (for the schedule).
        callbacks: extra Keras callbacks, passed to every phase.
        class_weight: per-class loss weights.
        verbose: Keras ``fit`` verbosity.
        checkpoint: makes each phase's checkpoint callback from the callbacks whose state
            it keeps (:func:`eye_model.checkpoints.build_checkpoint_callback`); it runs last.

    Returns:
        The history of all phases joined: metric name → one value per epoch run, plus
        ``phase`` (the phase index of each epoch).
    """
    import keras

    backbone = find_backbone(network)
    phases = plan_phases(config)
    history: dict[str, list[float]] = {}
    epoch = 0
    for index, phase in enumerate(phases):
        if index > 0:
            if phase.name == "fine_tune" and backbone is not None:
                unfreeze_top_layers(backbone, config.fine_tune_layers)
            compile_phase(network, phase.learning_rate, phase.epochs, steps_per_epoch)
        stopper = keras.callbacks.EarlyStopping(
            monitor="val_loss",
            patience=PATIENCE,
            restore_best_weights=True,
            start_from_epoch=epoch + phase.early_stopping_from,
        )
        result = network.fit(
            train_ds,
            validation_data=val_ds,
            initial_epoch=epoch,
            epochs=epoch + phase.epochs,
            class_weight=class_weight,
            callbacks=[
                stopper,
                *(callbacks or []),
                *([checkpoint([stopper])] if checkpoint is not None else []),
            ],
            verbose=verbose,
        )
        ran = len(result.history.get("loss", []))
        for key, values in result.history.items():
            history.setdefault(key, []).extend(float(v) for v in values)
        history.setdefault("phase", []).extend([float(index)] * ran)
        epoch += ran
    return history

"""The training recipe: repeatable seeding and augmentation, the phase plan, and transfer learning.

The transfer-learning test builds a ``keras.applications`` backbone with random weights,
saves them to a file (no download is possible here) and trains from that file as a user
trains from ImageNet weights.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from eye_model.augment import AugmentStrength, augment_batch, augment_dataset
from eye_model.recipe import (
    LR_FLOOR_FRACTION,
    build_and_compile,
    find_backbone,
    fit_phases,
    is_batch_norm,
    learning_rate_schedule,
    plan_phases,
    seed_training,
    validate_recipe,
)
from eye_model.train import TrainConfig

NO_CHANGE = AugmentStrength(
    flip=0.0,
    vertical_flip=0.0,
    rotation_degrees=0.0,
    min_field_fraction=1.0,
    brightness=0.0,
    contrast=0.0,
    saturation=0.0,
    channel_gain=0.0,
)


def _fundus_like(n: int, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Bright discs on black whose colour depends on the label: learnable in a few steps."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    disc = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (0.42 * size) ** 2
    labels = np.arange(n) % 4
    colours = np.array([[200, 200, 200], [180, 60, 40], [220, 140, 40], [150, 70, 60]], float)
    images = np.zeros((n, size, size, 3), np.float32)
    for i, label in enumerate(labels):
        noise = rng.normal(0, 12, (size, size, 3))
        images[i][disc] = np.clip(colours[label] + noise[disc], 0, 255)
    return images, labels.astype(np.int64)


def _batches(
    images: np.ndarray, labels: np.ndarray, batch: int = 8, seed: int | None = 0
):  # seed None: no shuffling
    import tensorflow as tf

    data = tf.data.Dataset.from_tensor_slices((images, labels))
    if seed is not None:
        data = data.shuffle(len(images), seed=seed)
    return data.batch(batch)


def _collect(dataset) -> np.ndarray:
    return np.concatenate([np.asarray(x) for x, _ in dataset])


def test_augmentation_off_and_identity_ranges_change_nothing() -> None:
    images, _ = _fundus_like(4, 40)
    same = np.asarray(augment_batch(images, np.array([1, 2]), NO_CHANGE))
    np.testing.assert_allclose(same, images, atol=1e-3)
    mirrored = np.asarray(augment_batch(images, np.array([1, 2]), replace(NO_CHANGE, flip=1.0)))
    np.testing.assert_allclose(mirrored, images[:, :, ::-1], atol=1e-3)
    data = _batches(images, np.zeros(4, np.int64))
    assert augment_dataset(data, seed=1, enabled=False) is data


def test_augmentation_is_seeded_varies_per_epoch_and_stays_fundus_like() -> None:
    images, labels = _fundus_like(16, 48)
    first = augment_dataset(_batches(images, labels), seed=3)
    again = augment_dataset(_batches(images, labels), seed=3)
    other = augment_dataset(_batches(images, labels), seed=4)
    epoch1, epoch2 = _collect(first), _collect(first)
    np.testing.assert_array_equal(epoch1, _collect(again))  # same seed, same batches
    assert np.abs(epoch1 - epoch2).mean() > 1.0  # a new draw every epoch
    assert np.abs(epoch1 - _collect(other)).mean() > 1.0
    # Labels travel with their images; values stay in range; the surround stays dark.
    in_order = augment_dataset(_batches(images, labels, seed=None), seed=3)
    np.testing.assert_array_equal(np.concatenate([np.asarray(y) for _, y in in_order]), labels)
    assert epoch1.shape == images.shape
    assert epoch1.min() >= 0.0
    assert epoch1.max() <= 255.0
    assert np.percentile(epoch1[:, :3, :3], 95) < 25.0

    # Mild colour changes: the centre of the field keeps its colour within a fifth of the range.
    def centre(batch: np.ndarray) -> np.ndarray:
        return batch[:, 20:28, 20:28].mean(axis=(1, 2))

    change = np.abs(centre(_collect(in_order)) - centre(images))
    assert change.max() > 2.0
    assert change.max() < 0.2 * 255


def test_phase_plan() -> None:
    small = TrainConfig(epochs=15)
    assert [(p.name, p.epochs, p.learning_rate) for p in plan_phases(small)] == [("full", 15, 2e-3)]
    pretrained = TrainConfig(backbone="efficientnet_b0", weights="imagenet", epochs=15)
    phases = plan_phases(pretrained)
    assert [(p.name, p.epochs, p.learning_rate) for p in phases] == [
        ("frozen", 5, 2e-3),
        ("fine_tune", 10, 1e-5),
    ]
    assert [p.name for p in plan_phases(replace(pretrained, fine_tune_layers=0))] == ["frozen"]
    assert [p.name for p in plan_phases(replace(pretrained, epochs_frozen=0))] == ["fine_tune"]
    assert [p.name for p in plan_phases(replace(pretrained, weights="none"))] == ["full"]
    # Early stopping never keeps weights from the warm-up or the first half of a phase.
    assert plan_phases(small)[0].early_stopping_from == 7
    assert phases[0].early_stopping_from == 2


def test_schedule_warms_up_then_decays() -> None:
    schedule = learning_rate_schedule(2e-3, epochs=15, steps_per_epoch=10)
    rates = [float(schedule(step)) for step in (0, 10, 20, 80, 149)]
    assert rates[0] == pytest.approx(2e-3 * LR_FLOOR_FRACTION)
    assert rates[1] < rates[2]
    assert rates[2] == pytest.approx(2e-3)
    assert rates[2] > rates[3] > rates[4] >= 2e-3 * LR_FLOOR_FRACTION * 0.999


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"epochs": 0}, "epochs=0"),
        ({"epochs_frozen": -1}, "epochs_frozen=-1"),
        ({"fine_tune_layers": -3}, "fine_tune_layers=-3"),
        ({"fine_tune_learning_rate": 0.0}, "fine_tune_learning_rate=0.0"),
    ],
)
def test_bad_recipe_values_are_named(change: dict, named: str) -> None:
    with pytest.raises(ValueError, match=named):
        validate_recipe(replace(TrainConfig(), **change))


def _train_small(seed: int, images: np.ndarray, labels: np.ndarray) -> tuple[dict, list]:
    config = TrainConfig(image_size=images.shape[1], epochs=3, seed=seed)
    seed_training(seed)
    train_ds = augment_dataset(_batches(images, labels, seed=seed), seed=seed)
    val_ds = _batches(images[:16], labels[:16])
    steps = -(-len(images) // 8)
    network = build_and_compile(config, steps)
    history = fit_phases(network, train_ds, val_ds, config, steps_per_epoch=steps, verbose=0)
    return history, network.get_weights()


@pytest.mark.slow
def test_same_seed_same_training_and_another_seed_differs() -> None:
    images, labels = _fundus_like(48, 32)
    history, weights = _train_small(5, images, labels)
    again, weights_again = _train_small(5, images, labels)
    other, _ = _train_small(6, images, labels)
    assert history["loss"] == pytest.approx(again["loss"], abs=1e-6)
    assert history["val_loss"] == pytest.approx(again["val_loss"], abs=1e-6)
    for w, w_again in zip(weights, weights_again, strict=True):
        np.testing.assert_allclose(w, w_again, atol=1e-6)
    assert history["loss"] != pytest.approx(other["loss"], abs=1e-4)
    assert history["phase"] == [0.0, 0.0, 0.0]  # the small CNN trains in one phase


def _backbone_weights_file(backbone: str, size: int, folder: Path) -> Path:
    import keras

    from eye_model.network import build_network

    keras.utils.set_random_seed(0)
    network = build_network(backbone, size, "none")
    path = folder / f"{backbone}.weights.h5"
    find_backbone(network).save_weights(path)
    return path


def _snapshot(model) -> dict[str, np.ndarray]:
    return {v.path: np.array(v.numpy()) for v in model.weights}


@pytest.mark.slow
@pytest.mark.parametrize("backbone", ["mobilenet_v3_small", "efficientnet_b0"])
def test_transfer_learning_phases_touch_only_what_they_should(
    backbone: str, tmp_path: Path
) -> None:
    import keras

    size = 48
    weights_file = _backbone_weights_file(backbone, size, tmp_path)
    config = TrainConfig(
        backbone=backbone,
        weights=str(weights_file),
        image_size=size,
        epochs=2,
        epochs_frozen=1,
        fine_tune_layers=15,
        fine_tune_learning_rate=1e-3,
        learning_rate=1e-2,
        seed=1,
    )
    images, labels = _fundus_like(32, size)
    seed_training(config.seed)
    steps = 4
    network = build_and_compile(config, steps)
    base = find_backbone(network)
    loaded = _snapshot(base)
    reference = keras.models.clone_model(base)
    reference.load_weights(weights_file)
    for variable in reference.weights:  # the weights file is what the backbone starts from
        np.testing.assert_array_equal(loaded[variable.path], variable.numpy())
    head_before = [np.array(w) for w in network.get_layer("logits").get_weights()]

    snapshots: list[dict[str, np.ndarray]] = []
    trainable: list[set[str]] = []

    class AtPhaseEnd(keras.callbacks.Callback):
        def on_train_end(self, logs: dict | None = None) -> None:
            snapshots.append(_snapshot(base))
            trainable.append({v.path for v in base.trainable_weights})

    history = fit_phases(
        network,
        _batches(images, labels),
        _batches(images[:16], labels[:16]),
        config,
        steps_per_epoch=steps,
        callbacks=[AtPhaseEnd()],
        verbose=0,
    )
    assert history["phase"] == [0.0, 1.0]
    after_frozen, after_fine_tune = snapshots

    # Phase 1: the head learnt, every backbone variable (statistics too) is as loaded.
    assert not np.allclose(head_before[0], network.get_layer("logits").get_weights()[0])
    assert trainable[0] == set()
    for path, value in loaded.items():
        np.testing.assert_array_equal(after_frozen[path], value, err_msg=path)

    # Phase 2: only the top layers' weights moved; no BatchNorm variable moved.
    unfrozen = trainable[1]
    top_layers = base.layers[-config.fine_tune_layers :]
    expected = {v.path for layer in top_layers if not is_batch_norm(layer) for v in layer.weights}
    assert unfrozen == expected
    assert unfrozen, "some top layer has weights"
    moved = {p for p, v in loaded.items() if not np.array_equal(after_fine_tune[p], v)}
    assert moved
    assert moved <= unfrozen
    assert len(moved) >= len(unfrozen) // 2  # the unfrozen layers did train
    for layer in base.layers:
        if is_batch_norm(layer):
            for variable in layer.weights:  # gamma, beta, moving mean and variance
                np.testing.assert_array_equal(
                    after_fine_tune[variable.path], loaded[variable.path], err_msg=variable.path
                )


def test_a_narrower_small_cnn_keeps_its_layers_and_costs_less() -> None:
    # benchmark_predict --raw-batch-ms stands for a faster CPU with a narrower network; the
    # pyfunc finds the same named layers in it (embedding, logits).
    from eye_model.network import build_small_cnn

    full, narrow = build_small_cnn(64), build_small_cnn(64, width=0.5)
    assert [layer.name for layer in narrow.layers] == [layer.name for layer in full.layers]
    assert narrow.get_layer("stem_conv").filters == 12
    assert full.get_layer("b4a_conv").filters == 128
    assert narrow.count_params() < full.count_params() / 2
    assert build_small_cnn(64, width=0.01).get_layer("stem_conv").filters == 4  # never none

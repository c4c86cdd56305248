"""What keeps confidence honest: label smoothing in the loss, and the harder calibration split."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from eye_model.calibration import build_harder_split
from eye_model.config import CLASS_NAMES
from eye_model.synthetic import draw_fundus, make_image_rng, sample_fundus_params


def test_smoothed_loss_matches_the_formula_and_never_rewards_certainty() -> None:
    from eye_model.network import LABEL_SMOOTHING, SmoothedSparseCrossentropy

    loss = SmoothedSparseCrossentropy()
    labels = np.array([0, 2])
    k = len(CLASS_NAMES)
    target = np.full((2, k), LABEL_SMOOTHING / k)
    target[np.arange(2), labels] += 1.0 - LABEL_SMOOTHING

    def expected(logits: np.ndarray) -> float:
        log_p = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        return float(-(target * log_p).sum(axis=1).mean())

    confident = np.array([[6.0, 0, 0, 0], [0, 0, 6.0, 0]], dtype=np.float32)
    certain = confident * 4
    assert float(loss(labels, confident)) == pytest.approx(expected(confident), rel=1e-4)
    # Pushing the logits further (towards confidence 1.00) costs more, not less.
    assert float(loss(labels, certain)) > float(loss(labels, confident)) + 1.0
    # Sample weights (class_weight) still apply: a zero weight drops the second image.
    weighted = float(loss(labels, confident, sample_weight=np.array([1.0, 0.0])))
    assert weighted == pytest.approx(float(loss(labels[:1], confident[:1])) / 2, rel=1e-4)


def test_smoothed_loss_survives_a_keras_config_round_trip() -> None:
    import keras

    from eye_model.network import SmoothedSparseCrossentropy

    again = keras.losses.deserialize(keras.losses.serialize(SmoothedSparseCrossentropy(0.2)))
    assert isinstance(again, SmoothedSparseCrossentropy)
    assert again.label_smoothing == 0.2


@pytest.fixture(scope="module")
def validation_like() -> tuple[np.ndarray, np.ndarray]:
    """Eight generated 96 px images per class (uint8) and their labels."""
    images, labels = [], []
    for ci, label in enumerate(CLASS_NAMES):
        for i in range(8):
            params = sample_fundus_params(label, make_image_rng(3, ci, i), 96)
            images.append(np.asarray(draw_fundus(params)))
            labels.append(ci)
    return np.stack(images), np.array(labels)


def test_harder_split_shifts_every_image_and_is_seeded(
    validation_like: tuple[np.ndarray, np.ndarray],
) -> None:
    pixels, _ = validation_like
    hard = build_harder_split(pixels, seed=1)
    assert hard.shape == pixels.shape
    assert hard.dtype == np.uint8
    np.testing.assert_array_equal(hard, build_harder_split(pixels, seed=1))
    assert not np.array_equal(hard, build_harder_split(pixels, seed=2))
    # Every image moved: colour cast, exposure or contrast change its mean colour.
    shift = np.abs(hard.astype(float) - pixels.astype(float)).mean(axis=(1, 2, 3))
    assert shift.min() > 3
    assert build_harder_split(pixels[:0], seed=1).shape == (0, 96, 96, 3)


def test_harder_split_keeps_cataract_the_blurriest(
    validation_like: tuple[np.ndarray, np.ndarray],
) -> None:
    """The shifts leave the signs alone: sharp classes stay sharper than cataract."""
    pixels, labels = validation_like
    hard = build_harder_split(pixels, seed=4)

    def sharpness(image: np.ndarray) -> float:
        return float(ndimage.laplace(image.astype(float).mean(axis=2))[24:72, 24:72].var())

    cataract = CLASS_NAMES.index("cataract")
    hazy = np.median([sharpness(im) for im, y in zip(hard, labels, strict=True) if y == cataract])
    sharp = np.median([sharpness(im) for im, y in zip(hard, labels, strict=True) if y != cataract])
    assert sharp > 2 * hazy

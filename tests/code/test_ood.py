"""The out-of-distribution score's fitting and its serving graph (eye_model.ood, inference)."""

from __future__ import annotations

import numpy as np
import pytest

from eye_model.inference import ModelConfig, NetworkRunner
from eye_model.ood import OOD_THRESHOLD, OodStatistics, fit_ood_statistics, score_ood
from tests.conftest import TINY_IMAGE_SIZE

CLASSES = 4
WIDTH = 16


def _sample(n: int, rng: np.random.Generator, shift: float = 0.0) -> tuple[np.ndarray, ...]:
    """Embeddings of four Gaussian classes (one dead unit), their labels and linear logits."""
    centres = np.random.default_rng(99).normal(0.0, 3.0, (CLASSES, WIDTH))
    labels = rng.integers(0, CLASSES, n)
    embedding = centres[labels] + rng.normal(0.0, 1.0, (n, WIDTH)) + shift
    embedding[:, -1] = 0.0  # a ReLU unit that never fires on the training data
    head = np.random.default_rng(98).normal(0.0, 0.5, (WIDTH, CLASSES))
    return embedding.astype(np.float32), labels, (embedding @ head).astype(np.float32)


@pytest.fixture(scope="module")
def fitted() -> OodStatistics:
    rng = np.random.default_rng(0)
    train, train_labels, _ = _sample(2_000, rng)
    validation, _, validation_logits = _sample(1_000, rng)
    return fit_ood_statistics(train, train_labels, validation_logits, validation, CLASSES)


def _scores(stats: OodStatistics, embedding: np.ndarray, logits: np.ndarray) -> np.ndarray:
    return np.asarray(score_ood(logits, embedding, stats), np.float64)


def test_one_is_the_validation_splits_99th_percentile_and_zero_its_median(
    fitted: OodStatistics,
) -> None:
    rng = np.random.default_rng(0)
    _sample(2_000, rng)  # the same draws as the fixture: its validation split
    validation, _, logits = _sample(1_000, rng)
    scores = _scores(fitted, validation, logits)
    assert np.percentile(scores, 99) == pytest.approx(1.0, abs=1e-4)
    assert np.median(scores) == pytest.approx(0.0, abs=1e-4)
    # Held-out data of the same distribution: about 1 % at or above 1.0.
    held_out, _, held_logits = _sample(5_000, np.random.default_rng(1))
    share = (_scores(fitted, held_out, held_logits) >= OOD_THRESHOLD).mean()
    assert 0.002 <= share <= 0.025


def test_inputs_away_from_the_training_data_score_far_above_one(fitted: OodStatistics) -> None:
    rng = np.random.default_rng(2)
    shifted, _, shifted_logits = _sample(200, rng, shift=4.0)
    assert (_scores(fitted, shifted, shifted_logits) >= OOD_THRESHOLD).all()
    # A unit that never fired in training firing now: finite, and clearly unlike training.
    awake, _, awake_logits = _sample(200, rng)
    awake[:, -1] = 5.0
    scores = _scores(fitted, awake, awake_logits)
    assert np.isfinite(scores).all()
    assert (scores >= OOD_THRESHOLD).mean() >= 0.95


def test_statistics_survive_the_model_config_and_old_configs_have_none(
    fitted: OodStatistics,
) -> None:
    config = ModelConfig(image_size=64, ood=fitted.to_dict())
    again = ModelConfig.from_json(config.to_json())
    assert OodStatistics.from_dict(again.ood) == fitted
    # A config.json written before the score existed has no "ood" key.
    old = ModelConfig.from_json('{"image_size": 64, "temperature": 1.5}')
    assert old.ood == {}
    assert OodStatistics.from_dict(old.ood) is None


def test_too_few_images_to_fit_is_a_clear_error() -> None:
    rng = np.random.default_rng(3)
    one, labels, logits = _sample(1, rng)
    with pytest.raises(ValueError, match="at least 2 training and 1 validation image"):
        fit_ood_statistics(one, labels, logits, one, CLASSES)


def test_the_serving_graph_computes_the_fitted_score(tiny_network) -> None:
    """NetworkRunner's third output is score_ood of the network's own logits and embedding."""
    from eye_model.network import build_embedding_model

    rng = np.random.default_rng(4)
    pixels = rng.integers(0, 256, (48, TINY_IMAGE_SIZE, TINY_IMAGE_SIZE, 3), dtype=np.uint8)
    dual = build_embedding_model(tiny_network)
    logits, embedding = (np.asarray(x) for x in dual(pixels.astype(np.float32), training=False))
    stats = fit_ood_statistics(
        embedding[:32], np.arange(32) % CLASSES, logits[32:], embedding[32:], CLASSES
    )
    runner = NetworkRunner(tiny_network, ModelConfig(TINY_IMAGE_SIZE, ood=stats.to_dict()))
    probabilities, _, ood = runner.run(pixels)
    assert ood is not None and ood.shape == (48,) and ood.dtype == np.float64
    np.testing.assert_allclose(ood, _scores(stats, embedding, logits), rtol=1e-4, atol=1e-4)
    # Without the statistics: the same probabilities, and no score.
    plain = NetworkRunner(tiny_network, ModelConfig(TINY_IMAGE_SIZE))
    same, _, none = plain.run(pixels)
    assert none is None
    np.testing.assert_array_equal(same, probabilities)

"""The out-of-distribution score: how unlike the training data an image looks to the network.

Two classic signals, both from one forward pass:

- the **Mahalanobis** distance (squared) of the penultimate-layer embedding to the nearest
  class mean, with one covariance shared by the classes (tied, Ledoit-Wolf shrunk), both
  fitted on the training split (Lee et al., 2018);
- the **energy** of the logits, ``-T·logsumexp(logits / T)`` with T = 1 (Liu et al., 2020):
  higher for inputs the network has little evidence for.

Each is standardised by its mean and standard deviation on the validation split, the two are
added, and the sum is mapped so that the validation split's median is 0 and its 99th
percentile 1: ``ood_score >= 1.0`` means beyond the validation split's 99th percentile.

:class:`OodStatistics` is what a model stores (``ModelConfig.ood``); :func:`score_ood` is
the one implementation of the score, in TensorFlow operations, so the serving graph
(:class:`eye_model.inference.NetworkRunner`) and the fitting here compute the same thing.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

#: ``ood_score`` at or above this is beyond the validation split's 99th percentile.
OOD_THRESHOLD = 1.0
#: Percentile (0-100) of the validation split that ``OOD_THRESHOLD`` stands for.
OOD_PERCENTILE = 99.0
#: The caution a row gets when its ``ood_score`` is at or above ``OOD_THRESHOLD``.
OOD_WARNING = "unlike the training data (ood_score >= 1); confidence may not be reliable"
#: Temperature of the energy score (1: the logits as they are).
ENERGY_TEMPERATURE = 1.0


@dataclass
class OodStatistics:
    """What the serving graph needs to compute ``ood_score`` (stored in ``ModelConfig.ood``).

    Attributes:
        class_means: (classes x d) class means of the whitened training embeddings.
        whitening: (embedding width x d) matrix W with W·Wᵀ the inverse of the tied
            covariance, so the squared Mahalanobis distance is ``|eW - mW|²``.
        mahalanobis_mean: mean of the squared distance on the validation split.
        mahalanobis_std: its standard deviation there.
        energy_mean: mean energy on the validation split.
        energy_std: its standard deviation there.
        median: median of the combined score on the validation split (maps to 0).
        q99: its ``OOD_PERCENTILE`` percentile there (maps to 1).
    """

    class_means: list[list[float]]
    whitening: list[list[float]]
    mahalanobis_mean: float
    mahalanobis_std: float
    energy_mean: float
    energy_std: float
    median: float
    q99: float

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values."""
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> OodStatistics | None:
        """Read back :meth:`to_dict`; None for an empty dict (a model stored without them)."""
        if not raw:
            return None
        return cls(**{key: raw[key] for key in cls.__dataclass_fields__})


def score_ood(logits: Any, embedding: Any, stats: OodStatistics, *, raw: bool = False) -> Any:
    """``ood_score`` of a batch, in TensorFlow operations (traceable in a ``tf.function``).

    Args:
        logits: (n, classes) float32 logits.
        embedding: (n, width) float32 penultimate-layer embedding.
        stats: the model's statistics; with ``raw=True`` only ``class_means`` and
            ``whitening`` are used.
        raw: return the two components, (squared Mahalanobis distance, energy), each (n,),
            instead of the score (for fitting the normalisation).

    Returns:
        A (n,) float32 tensor of scores, or the pair of components.
    """
    import tensorflow as tf

    whitening = tf.constant(np.asarray(stats.whitening, np.float32))
    means = tf.constant(np.asarray(stats.class_means, np.float32))
    whitened = tf.matmul(tf.cast(embedding, tf.float32), whitening)
    # (n, classes, d) differences: a few thousand numbers per image, exact in float32.
    difference = whitened[:, None, :] - means[None, :, :]
    mahalanobis = tf.reduce_min(tf.reduce_sum(tf.square(difference), axis=-1), axis=-1)
    energy = -ENERGY_TEMPERATURE * tf.reduce_logsumexp(
        tf.cast(logits, tf.float32) / ENERGY_TEMPERATURE, axis=-1
    )
    if raw:
        return mahalanobis, energy
    combined = (mahalanobis - stats.mahalanobis_mean) / stats.mahalanobis_std + (
        energy - stats.energy_mean
    ) / stats.energy_std
    return (combined - stats.median) / (stats.q99 - stats.median)


def fit_ood_statistics(
    train_embedding: np.ndarray,
    train_labels: np.ndarray,
    validation_logits: np.ndarray,
    validation_embedding: np.ndarray,
    num_classes: int,
) -> OodStatistics:
    """Fit the class means and tied covariance on training, the normalisation on validation.

    Args:
        train_embedding: (n, width) embeddings of the training split (no augmentation).
        train_labels: (n,) class codes of the training split.
        validation_logits: (m, classes) logits of the validation split.
        validation_embedding: (m, width) embeddings of the validation split.
        num_classes: number of classes (a class missing from training gets no mean).

    Returns:
        The statistics to store with the model.

    Raises:
        ValueError: the training split has fewer than two images or the validation split
            none (the score would mean nothing).
    """
    from sklearn.covariance import LedoitWolf

    if len(train_embedding) < 2 or len(validation_embedding) == 0:
        raise ValueError(
            f"the out-of-distribution score needs at least 2 training and 1 validation image "
            f"(got {len(train_embedding)} and {len(validation_embedding)}); train on more images"
        )
    embedding = train_embedding.astype(np.float64)
    present = [c for c in range(num_classes) if (train_labels == c).any()]
    means = np.stack([embedding[train_labels == c].mean(axis=0) for c in present])
    centred = embedding - means[np.searchsorted(present, train_labels)]
    # Shrinkage keeps the covariance invertible: ReLU units that never fire on the
    # training split have zero variance there, and fire on noise.
    covariance = LedoitWolf(assume_centered=True).fit(centred).covariance_
    scale = np.trace(covariance) / covariance.shape[0]
    covariance += 1e-6 * max(scale, 1e-12) * np.eye(covariance.shape[0])
    whitening = np.linalg.cholesky(np.linalg.inv(covariance))
    stats = OodStatistics(
        class_means=(means @ whitening).tolist(),
        whitening=whitening.tolist(),
        mahalanobis_mean=0.0,
        mahalanobis_std=1.0,
        energy_mean=0.0,
        energy_std=1.0,
        median=0.0,
        q99=1.0,
    )
    mahalanobis, energy = (
        np.asarray(x, np.float64)
        for x in score_ood(validation_logits, validation_embedding, stats, raw=True)
    )
    stats.mahalanobis_mean = float(mahalanobis.mean())
    stats.mahalanobis_std = float(max(mahalanobis.std(), 1e-6))
    stats.energy_mean = float(energy.mean())
    stats.energy_std = float(max(energy.std(), 1e-6))
    # With median 0 and q99 1 (as yet) the score is the combined sum itself.
    combined = np.asarray(score_ood(validation_logits, validation_embedding, stats), np.float64)
    stats.median = float(np.median(combined))
    q99 = float(np.percentile(combined, OOD_PERCENTILE))
    # A degenerate validation split (all alike) must still give a finite, increasing map.
    stats.q99 = q99 if q99 > stats.median + 1e-6 else stats.median + 1.0
    return stats

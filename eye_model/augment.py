"""On-the-fly augmentation that is safe for fundus photographs, seeded and repeatable.

A fundus photograph stays a plausible fundus photograph under: a mirror image (the
other eye), small rotations (the camera is never perfectly level), a slightly tighter
field of view (cameras crop the circular field differently), and small changes of
exposure, contrast and colour balance (cameras and pupils differ). Larger changes are
not safe: a strong colour shift mimics cataract haze or hides exudates.

Every random number comes from stateless TensorFlow ops seeded per batch by a seeded
``tf.data.Dataset.random`` stream, so the same seed gives the same augmented batches
in every run, however many threads the pipeline uses.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class AugmentStrength:
    """How far each augmentation goes (the defaults are the fundus-safe ranges).

    Attributes:
        flip: probability of a left-right mirror (a left eye becomes a right eye).
        vertical_flip: probability of an upside-down mirror.
        rotation_degrees: largest rotation either way, in degrees.
        min_field_fraction: smallest side of the random field crop, as a fraction of
            the image side (1.0 = no crop); the crop is resized back to full size.
        brightness: largest relative exposure change (0.1 = ±10 %).
        contrast: largest relative contrast change around the image mean.
        saturation: largest relative colour saturation change.
        channel_gain: largest relative change of each colour channel (white balance).
    """

    flip: float = 0.5
    vertical_flip: float = 0.5
    rotation_degrees: float = 10.0
    min_field_fraction: float = 0.85
    brightness: float = 0.1
    contrast: float = 0.15
    saturation: float = 0.15
    channel_gain: float = 0.05


#: ITU-R BT.601 luma weights: the grey level a saturation change pivots on.
_LUMA = (0.299, 0.587, 0.114)


def augment_batch(images: Any, seed: Any, strength: AugmentStrength | None = None) -> Any:
    """Augment a batch of images, each with its own random draw.

    Args:
        images: float32 tensor (batch, height, width, 3), values 0-255.
        seed: int tensor of shape (2,), the stateless seed of this batch.
        strength: the ranges; None → :class:`AugmentStrength` defaults.

    Returns:
        A float32 tensor of the same shape, values clipped to 0-255.
    """
    import tensorflow as tf

    s = strength or AugmentStrength()
    images = tf.convert_to_tensor(images, tf.float32)
    batch = tf.shape(images)[0]
    height = tf.cast(tf.shape(images)[1], tf.float32)
    width = tf.cast(tf.shape(images)[2], tf.float32)
    u = tf.random.stateless_uniform([batch, 12], seed=seed)

    def symmetric(column: int) -> Any:  # uniform in [-1, 1]
        return u[:, column] * 2.0 - 1.0

    flip_lr = (u[:, 0] < s.flip)[:, None, None, None]
    images = tf.where(flip_lr, tf.reverse(images, axis=[2]), images)
    flip_ud = (u[:, 1] < s.vertical_flip)[:, None, None, None]
    images = tf.where(flip_ud, tf.reverse(images, axis=[1]), images)

    # One affine map per image: output pixel p samples input centre + shift + scale R (p - centre).
    angle = symmetric(2) * (s.rotation_degrees * math.pi / 180.0)
    scale = s.min_field_fraction + (1.0 - s.min_field_fraction) * u[:, 3]
    shift_x = symmetric(4) * (1.0 - scale) / 2.0 * width
    shift_y = symmetric(5) * (1.0 - scale) / 2.0 * height
    cx, cy = (width - 1.0) / 2.0, (height - 1.0) / 2.0
    a0, a1 = scale * tf.cos(angle), -scale * tf.sin(angle)
    b0, b1 = scale * tf.sin(angle), scale * tf.cos(angle)
    a2 = cx + shift_x - a0 * cx - a1 * cy
    b2 = cy + shift_y - b0 * cx - b1 * cy
    zeros = tf.zeros_like(a0)
    transforms = tf.stack([a0, a1, a2, b0, b1, b2, zeros, zeros], axis=1)
    images = tf.raw_ops.ImageProjectiveTransformV3(
        images=images,
        transforms=transforms,
        output_shape=tf.shape(images)[1:3],
        fill_value=0.0,  # the surround of the fundus field is black
        interpolation="BILINEAR",
        fill_mode="CONSTANT",
    )

    grey = tf.reduce_sum(images * tf.constant(_LUMA, tf.float32), axis=-1, keepdims=True)
    saturation = (1.0 + symmetric(6) * s.saturation)[:, None, None, None]
    images = grey + saturation * (images - grey)
    gains = 1.0 + tf.stack([symmetric(9), symmetric(10), symmetric(11)], axis=1) * s.channel_gain
    images = images * gains[:, None, None, :]
    mean = tf.reduce_mean(images, axis=[1, 2, 3], keepdims=True)
    contrast = (1.0 + symmetric(7) * s.contrast)[:, None, None, None]
    images = mean + contrast * (images - mean)
    brightness = (1.0 + symmetric(8) * s.brightness)[:, None, None, None]
    return tf.clip_by_value(images * brightness, 0.0, 255.0)


def augment_dataset(
    dataset: Any, *, seed: int, enabled: bool = True, strength: AugmentStrength | None = None
) -> Any:
    """Augment a batched ``(images, labels)`` dataset on the fly, repeatably.

    Each epoch draws new augmentations (the seed stream is re-randomised per
    iteration), and the same ``seed`` gives the same sequence of epochs in every run.

    Args:
        dataset: a ``tf.data.Dataset`` of (float32 images 0-255, labels) batches.
        seed: the augmentation seed.
        enabled: False returns ``dataset`` unchanged (the ``augment`` parameter).
        strength: the ranges; None → :class:`AugmentStrength` defaults.

    Returns:
        The augmented dataset, prefetched.
    """
    if not enabled:
        return dataset
    import tensorflow as tf

    seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
    paired = tf.data.Dataset.zip((dataset, seeds))
    return paired.map(
        lambda batch, batch_seed: (augment_batch(batch[0], batch_seed, strength), batch[1]),
        num_parallel_calls=tf.data.AUTOTUNE,
    ).prefetch(tf.data.AUTOTUNE)

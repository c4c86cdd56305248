"""A harder validation split for calibration: the validation images as other cameras take them.

A temperature fitted on validation images drawn like the training images learns
that the network is nearly always right, and leaves it nearly certain on photographs
unlike its training set. Fitting it on the validation split together with copies
shifted in ways that keep every class's signs (colour cast, exposure, gamma,
contrast, noise, heavy JPEG compression, a lower resolution) teaches the temperature
how often the network errs when the camera changes. Blur and haze are left out:
they are the signs of cataract.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def shift_camera(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One image (h, w, 3) uint8 as another camera might record it; returns uint8.

    Args:
        image: RGB pixels, 0-255.
        rng: random generator (consumed).
    """
    pixels = image.astype(np.float32) / 255.0
    cast = rng.uniform([0.8, 0.75, 0.6], [1.15, 1.2, 1.5]).astype(np.float32)
    exposure = np.float32(np.exp(rng.uniform(np.log(0.6), np.log(1.4))))
    pixels = np.clip(pixels * cast * exposure, 0.0, 1.0) ** np.float32(rng.uniform(0.7, 1.4))
    mean = pixels.mean(axis=(0, 1), keepdims=True)
    pixels = mean + (pixels - mean) * np.float32(rng.uniform(0.75, 1.3))
    pixels += rng.normal(0.0, rng.uniform(0.0, 0.03), pixels.shape).astype(np.float32)
    shifted = Image.fromarray(np.clip(pixels * 255.0 + 0.5, 0, 255).astype(np.uint8))
    side = shifted.width
    if rng.random() < 0.5:
        low = max(16, int(side * rng.uniform(0.5, 0.8)))
        shifted = shifted.resize((low, low), Image.Resampling.BILINEAR).resize(
            (side, side), Image.Resampling.BICUBIC
        )
    buffer = io.BytesIO()
    shifted.save(buffer, format="JPEG", quality=int(rng.integers(25, 60)))
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return np.asarray(decoded.convert("RGB"), dtype=np.uint8)


def build_harder_split(pixels: np.ndarray, seed: int) -> np.ndarray:
    """Camera-shifted copies of a split's images, for fitting the temperature.

    Args:
        pixels: (n, size, size, 3) images, uint8 or float 0-255.
        seed: seed of the shifts.

    Returns:
        (n, size, size, 3) uint8 copies, one shift per image, same order (same labels).
    """
    rng = np.random.default_rng(np.random.SeedSequence([seed, 17]))
    images = np.clip(np.asarray(pixels), 0, 255).astype(np.uint8)
    return np.stack([shift_camera(image, rng) for image in images]) if len(images) else images

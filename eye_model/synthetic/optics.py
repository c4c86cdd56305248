"""Between the retina and the file: the eye's optics and the camera.

Blur, lens scatter, haze and contrast loss (cataract, or slight defocus),
then exposure, white balance, saturation, gamma, rim flare, dust and
reflections, the field stop and sensor noise, then the camera's resolution;
all but the cataract signs drawn alike for every class.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image
from scipy import ndimage

from eye_model.synthetic.artefacts import paint_lens_artefacts
from eye_model.synthetic.params import FundusParams
from eye_model.synthetic.raster import FieldGrid, rgb, upsample

_HAZE_COLOUR = rgb(0.80, 0.75, 0.64)
_FLARE_COLOUR = rgb(1.0, 0.85, 0.6)


def _gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur (sigma in pixels) of a (c, n, n) float image.

    Large sigmas blur a box-reduced copy and upsample it, several times faster.
    """
    n = image.shape[1]
    factor = max(1, int(sigma / 1.5))
    if factor == 1:
        return ndimage.gaussian_filter(image, sigma=(0, sigma, sigma), mode="nearest")
    small_n = max(8, n // factor)
    small = np.stack(
        [
            np.asarray(Image.fromarray(ch).resize((small_n, small_n), Image.Resampling.BOX))
            for ch in image
        ]
    )
    small = ndimage.gaussian_filter(
        small, sigma=(0, sigma * small_n / n, sigma * small_n / n), mode="nearest"
    )
    return np.stack([upsample(ch, n) for ch in small])


def field_mask(params: FundusParams, grid: FieldGrid) -> np.ndarray:
    """The field stop (circle, chords, notch), 1 inside, 0 outside, with a one-pixel soft edge."""
    inside = params.field_shape.inside_distance(grid.qx, grid.qy, grid.field_r)
    return np.clip(inside * params.field_radius_px + 0.5, 0.0, 1.0)


def apply_optics(params: FundusParams, grid: FieldGrid, scene: np.ndarray) -> np.ndarray:
    """Blur (defocus, lens opacity), haze and contrast loss inside the field."""
    if 0.25 <= params.blur_sigma_px < 1.5:
        # Slight defocus: the dark rim it pulls in is under a pixel wide.
        scene = ndimage.gaussian_filter(
            scene, sigma=(0, params.blur_sigma_px, params.blur_sigma_px)
        )
    elif params.blur_sigma_px >= 1.5:
        # Normalised convolution: blur only what is inside the field, so the
        # rim does not darken from the black surround.
        field = field_mask(params, grid)
        weighted = np.concatenate([scene * field, field[None]])
        blurred = _gaussian_blur(weighted, params.blur_sigma_px)
        if params.scatter_fraction:
            wide = _gaussian_blur(weighted, 0.06 * params.image_size)
            blurred = (1.0 - params.scatter_fraction) * blurred + params.scatter_fraction * wide
        scene = blurred[:3] / np.maximum(blurred[3], 1e-3)
    if params.haze:
        hx, hy = params.haze_centre
        profile = 0.55 + 0.45 * np.exp(-((grid.qx - hx) ** 2 + (grid.qy - hy) ** 2) / (2 * 0.45**2))
        veil = params.haze * profile
        scene = scene * (1.0 - veil) + veil * _HAZE_COLOUR
    if params.contrast < 1.0:
        inside = grid.field_r[::4, ::4] < 0.95
        mean = scene[:, ::4, ::4][:, inside].mean(axis=1).reshape(3, 1, 1)
        scene = mean + (scene - mean) * params.contrast
    return scene


def apply_camera(
    params: FundusParams, grid: FieldGrid, scene: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Exposure, white balance, saturation, gamma, rim flare, lens artefacts, field stop, noise."""
    gains = params.exposure * np.asarray(params.white_balance, dtype=np.float32).reshape(3, 1, 1)
    scene = scene * gains
    if params.saturation != 1.0:
        grey = scene.mean(axis=0, keepdims=True)
        scene = grey + (scene - grey) * np.float32(params.saturation)
    scene = np.clip(scene, 0.0, 1.0) ** np.float32(1.0 / params.gamma)
    if params.rim_flare:
        direction = grid.qx * math.cos(params.rim_flare_angle) + grid.qy * math.sin(
            params.rim_flare_angle
        )
        towards = np.clip(direction / np.maximum(grid.field_r, 1e-6), 0.0, 1.0) ** 2
        band = np.exp(-(((1.0 - grid.field_r) / 0.06) ** 2))
        scene = scene + params.rim_flare * band * towards * _FLARE_COLOUR
    scene = paint_lens_artefacts(params.lens_artefacts, grid.qx, grid.qy, scene)
    noise = rng.standard_normal(grid.field_r.shape, dtype=np.float32) * params.sensor_noise
    # The surround is the camera's black level with the same sensor noise.
    return (scene - params.black_level) * field_mask(params, grid) + params.black_level + noise


def apply_resolution(image: Image.Image, resolution: float) -> Image.Image:
    """A camera of lower resolution: down to ``resolution`` x the size and back up (bicubic)."""
    if resolution >= 1.0:
        return image
    side = image.width
    small = max(16, round(side * resolution))
    low = image.resize((small, small), Image.Resampling.BILINEAR, reducing_gap=2.0)
    return low.resize((side, side), Image.Resampling.BICUBIC)

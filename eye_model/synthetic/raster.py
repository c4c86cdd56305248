"""The pixel grid of an image and the small raster helpers every painter uses.

Scenes are channel-first float32 arrays (3, n, n) of linear RGB in 0-1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from eye_model.synthetic.params import FundusParams

# Vessel and lesion masks are drawn at this multiple of the image size and
# box-reduced, which anti-aliases sub-pixel vessels cheaply.
SUPERSAMPLE = 2


def rgb(red: float, green: float, blue: float) -> np.ndarray:
    """A colour shaped (3, 1, 1) to broadcast over a channel-first (3, n, n) scene.

    Scenes are channel-first because numpy broadcasts a (3, 1, 1) colour over
    them several times faster than over a trailing axis of 3.
    """
    return np.array([red, green, blue], dtype=np.float32).reshape(3, 1, 1)


@dataclass(frozen=True, eq=False)
class FieldGrid:
    """Per-pixel coordinates of an image: field-relative and anatomical."""

    qx: np.ndarray  # (x - cx) / R, image orientation
    qy: np.ndarray
    field_r: np.ndarray  # distance from the field centre / R
    u: np.ndarray  # anatomical x (field units, right-eye layout)
    v: np.ndarray  # anatomical y

    @classmethod
    def build(cls, params: FundusParams) -> FieldGrid:
        """The grid of the image that ``params`` describes (float32, n x n each)."""
        n = params.image_size
        coords = np.arange(n, dtype=np.float32) + 0.5
        cx, cy = params.field_centre_px
        qx = ((coords - cx) / params.field_radius_px)[None, :].repeat(n, axis=0)
        qy = ((coords - cy) / params.field_radius_px)[:, None].repeat(n, axis=1)
        theta = math.radians(params.rotation_deg)
        cos, sin = math.cos(theta), math.sin(theta)
        u = cos * qx + sin * qy
        v = -sin * qx + cos * qy
        if params.mirrored:
            u = -u
        u -= params.anatomy_offset[0]
        v -= params.anatomy_offset[1]
        return cls(qx=qx, qy=qy, field_r=np.hypot(qx, qy), u=u, v=v)


def smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Zero-mean smooth noise of about unit std with ``cells`` features across."""
    cells = max(2, min(cells, size))
    field = upsample(rng.standard_normal((cells, cells), dtype=np.float32), size)
    return field / max(float(field.std()), 1e-6)


def smoothstep(edge0: float, edge1: float, x: np.ndarray) -> np.ndarray:
    """Smooth 0-1 ramp of ``x`` between ``edge0`` and ``edge1`` (Hermite, as in GLSL)."""
    t = np.clip((x - edge0) / (edge1 - edge0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def upsample(field: np.ndarray, size: int) -> np.ndarray:
    """Bicubic upsampling of a float32 field to ``size`` x ``size``."""
    if field.shape[0] == size:
        return field
    return np.asarray(
        Image.fromarray(field.astype(np.float32)).resize((size, size), Image.Resampling.BICUBIC)
    )


def pixel_window(
    params: FundusParams, centre: tuple[float, float], half: float
) -> tuple[slice, slice]:
    """Pixel window (rows, columns) of half-side ``half`` round ``centre`` (field units)."""
    n = params.image_size
    x, y = params.to_pixels(np.array([centre]))[0]
    half_px = half * params.field_radius_px + 2
    return (
        slice(max(0, int(y - half_px)), min(n, int(y + half_px) + 1)),
        slice(max(0, int(x - half_px)), min(n, int(x + half_px) + 1)),
    )


def channels(window: tuple[slice, slice]) -> tuple[slice, slice, slice]:
    """Index of a pixel window across all channels of a (3, n, n) scene."""
    return (slice(None), window[0], window[1])

"""Painting the healthy background: retina and choroidal texture, macula, optic disc.

The disc painter also draws the cup, so a glaucomatous cup (large, notched,
pale rim) comes out of the same code as a healthy one.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from eye_model.synthetic.params import FundusParams
from eye_model.synthetic.raster import (
    FieldGrid,
    channels,
    pixel_window,
    rgb,
    smooth_noise,
    smoothstep,
    upsample,
)

_DISC_RIM_COLOUR = rgb(0.96, 0.62, 0.27)
_DISC_MARGIN_COLOUR = rgb(0.95, 0.52, 0.24)
_DISC_CUP_COLOUR = rgb(1.0, 0.9, 0.72)
_ATROPHY_COLOUR = rgb(0.85, 0.62, 0.45)
_MACULA_ABSORPTION = rgb(0.7, 1.0, 1.0)
_REFLEX_COLOUR = rgb(0.9, 0.9, 0.8)


def paint_retina(params: FundusParams, grid: FieldGrid, rng: np.random.Generator) -> np.ndarray:
    """Base orange-red retina with choroidal texture, (3, n, n) float32.

    The texture is built at a quarter of the resolution and upsampled once.
    """
    n = params.image_size
    low = max(16, n // 4)
    texture = (
        0.55 * smooth_noise(rng, low, 6)
        + 0.45 * smooth_noise(rng, low, 24)
        + 0.35 * smooth_noise(rng, low, low)
    )
    shade = 1.0 + params.texture_amplitude * texture
    if params.tigroid:
        shade *= 1.0 + params.tigroid * 0.22 * _choroidal_streaks(rng, params, low)
    chroma = 1.0 + 0.5 * params.texture_amplitude * smooth_noise(rng, low, 10)
    shade = upsample(shade, n)
    chroma = upsample(chroma, n)
    scene = np.asarray(params.fundus_colour, dtype=np.float32).reshape(3, 1, 1) * shade
    # Green and blue vary a little more than red (pigment patches).
    scene[1:] *= chroma
    return scene


def _choroidal_streaks(rng: np.random.Generator, params: FundusParams, size: int) -> np.ndarray:
    """Tigroid pattern: broad choroidal vessels with darker gaps, in the periphery.

    Noise on a polar grid round the field centre, stretched along the radius
    and with a meandering angle, gives broad wavy bands running outwards; the
    posterior pole stays clear. About -0.5..0.5.
    """
    coords = (np.arange(size, dtype=np.float32) + 0.5) * (params.image_size / size)
    dx = (coords[None, :] - params.field_centre_px[0]) / params.field_radius_px
    dy = (coords[:, None] - params.field_centre_px[1]) / params.field_radius_px
    field_r = np.hypot(dx, dy)
    spokes, rings = 40, 2
    angle = np.arctan2(dy, dx) + 0.35 * smooth_noise(rng, size, 5)
    polar = rng.standard_normal((rings + 3, spokes)).astype(np.float32)
    a_idx = (angle / (2 * math.pi) + 0.5) * spokes
    r_idx = np.clip(field_r, 0.0, 1.5) / 1.5 * rings + 1.0
    noise = ndimage.map_coordinates(polar, [r_idx, a_idx], order=1, mode="grid-wrap")
    noise /= max(float(noise.std()), 1e-6)
    bands = 0.5 * np.tanh(1.5 * noise)
    return bands * np.clip(field_r * 1.6 - 0.6, 0.0, 1.0)


def paint_macula(params: FundusParams, grid: FieldGrid, scene: np.ndarray) -> None:
    """Darken the macula and fovea, add the foveal reflex (in place)."""
    window = pixel_window(params, params.fovea_centre, 3.2 * params.macula_radius)
    fx, fy = params.fovea_centre
    d2 = (grid.u[window] - fx) ** 2 + (grid.v[window] - fy) ** 2
    macula = np.exp(-d2 / (2 * params.macula_radius**2))
    fovea = np.exp(-d2 / (2 * 0.03**2))
    darkening = params.macula_depth * macula + 0.25 * fovea
    local = scene[channels(window)]
    local *= 1.0 - darkening * _MACULA_ABSORPTION
    if params.foveal_reflex > 0.3:
        reflex = np.exp(-d2 / (2 * 0.007**2))
        local += 0.22 * params.foveal_reflex * reflex * _REFLEX_COLOUR


def paint_disc(
    params: FundusParams, grid: FieldGrid, scene: np.ndarray
) -> tuple[tuple[slice, slice], np.ndarray]:
    """Paint the optic disc, its cup and peripapillary atrophy (in place).

    Returns:
        The pixel window of the disc and the cup mask (0-1) inside it.
    """
    window = pixel_window(
        params, params.disc_centre, 2.2 * params.disc_radius * params.disc_elongation
    )
    u, v = grid.u[window], grid.v[window]
    dx, dy = params.disc_centre
    rd = params.disc_radius
    du = (u - dx) / rd
    dv = (v - dy) / (rd * params.disc_elongation)
    rho = np.hypot(du, dv)
    disc = 1.0 - smoothstep(0.95, 1.03, rho)

    cup_shape = params.cup_shape
    cu = (u - cup_shape.centre[0]) / cup_shape.radius_x
    cv = (v - cup_shape.centre[1]) / cup_shape.radius_y
    cup_rho = np.hypot(cu, cv) / cup_shape.stretch(
        np.arctan2(cv * cup_shape.radius_y, cu * cup_shape.radius_x)
    )
    deep = params.label == "glaucoma"
    cup = (
        1.0 - (smoothstep(0.85, 1.03, cup_rho) if deep else smoothstep(0.8, 1.05, cup_rho))
    ) * disc

    local = scene[channels(window)]
    # Peripapillary glow and atrophy crescent (temporal side, u < 0).
    halo = np.exp(-(np.clip(rho - 1.0, 0.0, None) ** 2) / 0.05) * (1.0 - disc)
    local *= 1.0 + (0.04 + 0.3 * max(0.0, params.disc_glow - 1.0)) * halo
    if params.peripapillary_atrophy:
        temporal = np.clip(-du / np.maximum(rho, 1e-6), 0.0, 1.0) ** 1.5
        crescent = (smoothstep(0.95, 1.0, rho) - smoothstep(1.15, 1.3, rho)) * temporal
        crescent *= 0.7 * params.peripapillary_atrophy
        local[:] = local * (1.0 - crescent) + crescent * _ATROPHY_COLOUR

    rim_colour = (1 - params.disc_pallor) * _DISC_RIM_COLOUR + params.disc_pallor * _DISC_CUP_COLOUR
    # The healthy rim is pinker towards the margin, where the nerve fibre layer thickens.
    margin = smoothstep(0.5, 1.0, rho) * (1.0 - params.disc_pallor)
    rim_colour = rim_colour * (1.0 - 0.3 * margin) + 0.3 * margin * _DISC_MARGIN_COLOUR
    brightness = (0.88 + 0.12 * np.clip(1.0 - rho**2, 0.0, 1.0)) * params.disc_glow
    disc_colour = (rim_colour * (1.0 - cup) + _DISC_CUP_COLOUR * cup) * brightness
    local[:] = local * (1.0 - disc) + disc_colour * disc
    return window, cup

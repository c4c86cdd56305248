"""Painting a fundus photograph from its parameters, deterministically."""

from __future__ import annotations

import numpy as np
from PIL import Image

from eye_model.synthetic.anatomy import paint_disc, paint_macula, paint_retina
from eye_model.synthetic.lesions import paint_lesions
from eye_model.synthetic.optics import apply_camera, apply_optics, apply_resolution
from eye_model.synthetic.params import FundusParams
from eye_model.synthetic.raster import FieldGrid, smooth_noise, upsample
from eye_model.synthetic.sampling import sample_fundus_params
from eye_model.synthetic.vessels import paint_vessels


def draw_fundus(params: FundusParams) -> Image.Image:
    """Paint a fundus photograph from its parameters (deterministic).

    Args:
        params: the parameters from :func:`sample_fundus_params`.

    Returns:
        An RGB image of ``params.image_size`` x ``params.image_size`` pixels.
    """
    rng = np.random.default_rng(params.texture_seed)
    grid = FieldGrid.build(params)

    scene = paint_retina(params, grid, rng)
    paint_macula(params, grid, scene)
    cup_window = paint_disc(params, grid, scene)
    paint_vessels(params, grid, scene, cup_window)
    if params.lesions:
        paint_lesions(params, scene)

    illumination = 1.0 - params.vignetting * np.clip(grid.field_r, 0, 1) ** 2.5
    illumination *= (
        1.0 + params.illumination_tilt[0] * grid.qx + params.illumination_tilt[1] * grid.qy
    )
    if params.illumination_blotch:
        # Uneven illumination: a few broad brighter and darker areas.
        low = max(16, params.image_size // 8)
        blotch = upsample(smooth_noise(rng, low, 3), params.image_size)
        illumination *= 1.0 + params.illumination_blotch * blotch
    scene *= illumination

    scene = apply_optics(params, grid, scene)
    scene = apply_camera(params, grid, scene, rng)
    image = np.clip(scene * 255.0 + 0.5, 0, 255).astype(np.uint8)
    picture = Image.fromarray(np.ascontiguousarray(image.transpose(1, 2, 0)))
    return apply_resolution(picture, params.resolution)


def render_fundus(
    label: str,
    rng: np.random.Generator,
    image_size: int = 512,
    severity: float | None = None,
) -> Image.Image:
    """Render one synthetic colour fundus photograph.

    Args:
        label: one of :data:`CLASS_NAMES`.
        rng: the random generator (consumed).
        image_size: side of the square image, in pixels.
        severity: strength of the class signs in 0-1 (drawn in 0.3-1 when None).

    Returns:
        An RGB image of ``image_size`` x ``image_size`` pixels.
    """
    return draw_fundus(sample_fundus_params(label, rng, image_size, severity))

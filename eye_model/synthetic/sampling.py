"""Drawing every random choice of one image into a :class:`FundusParams`.

Anatomy, the signs of the image's class graded by its severity, and the
camera variation (drawn from the same distributions for every class).
"""

from __future__ import annotations

import math

import numpy as np

from eye_model.config import CLASS_NAMES
from eye_model.synthetic.artefacts import sample_field_shape, sample_lens_artefacts
from eye_model.synthetic.lesions import sample_dr_lesions
from eye_model.synthetic.params import (
    CATARACT_BLUR_FRACTION,
    GLAUCOMA_CUP_TO_DISC,
    JPEG_QUALITY_RANGE,
    MIN_IMAGE_SIZE,
    NORMAL_CUP_TO_DISC,
    RESOLUTION_RANGE,
    SEVERITY_RANGE,
    SHARP_BLUR_FRACTION,
    CupShape,
    FundusParams,
    Lesion,
)
from eye_model.synthetic.vessels import sample_vessel_tree

# Fundus colours as cameras record them (0-1): each image mixes two of them. Orange of a
# lightly and of a heavily pigmented eye, a pale blond fundus, a deep brown one, and a
# saturated red. The red is one real anchor: scikit-image's retina.jpg (a healthy eye)
# averages (207, 83, 60) over its field, vessels and vignetting included. None is
# favoured: real cameras and eyes spread over all of them.
_FUNDUS_PALETTE = np.array(
    [
        [0.93, 0.47, 0.20],
        [0.66, 0.24, 0.09],
        [0.95, 0.62, 0.35],
        [0.52, 0.20, 0.10],
        [0.90, 0.37, 0.26],
    ]
)


def sample_fundus_params(
    label: str,
    rng: np.random.Generator,
    image_size: int = 512,
    severity: float | None = None,
) -> FundusParams:
    """Draw the anatomy, class signs and camera settings of one image.

    Args:
        label: one of :data:`CLASS_NAMES`.
        rng: the random generator (consumed).
        image_size: side of the square image, in pixels.
        severity: strength of the class signs in 0-1; drawn from
            :data:`SEVERITY_RANGE` when None; ignored (0) for ``normal``.

    Returns:
        The parameters; paint them with :func:`draw_fundus`.

    Raises:
        ValueError: for an unknown label, a too small image or a severity outside 0-1.
    """
    _check_label(label)
    if image_size < MIN_IMAGE_SIZE:
        raise ValueError(f"image_size={image_size} is too small; use {MIN_IMAGE_SIZE} or more")
    if severity is not None and not 0.0 <= severity <= 1.0:
        raise ValueError(f"severity={severity} must be between 0 and 1")
    if label == "normal":
        severity = 0.0
    elif severity is None:
        severity = float(rng.uniform(*SEVERITY_RANGE))
    # Severity mapped onto 0-1 across the drawn range, for grading the signs.
    grade = float(
        np.clip((severity - SEVERITY_RANGE[0]) / (SEVERITY_RANGE[1] - SEVERITY_RANGE[0]), 0, 1)
    )
    n = image_size

    # Camera geometry: some fields overflow the image (cropped at its edges), some are cut
    # by chords or marked by a notch, some sit off centre.
    cropped = bool(rng.random() < 0.25)
    if cropped:
        field_radius_px = n * rng.uniform(0.50, 0.56)
    else:
        field_radius_px = n * rng.uniform(0.40, 0.49)
    field_centre_px = (n / 2 + n * rng.uniform(-0.03, 0.03), n / 2 + n * rng.uniform(-0.03, 0.03))
    field_shape = sample_field_shape(rng, cropped)
    rotation_deg = float(rng.uniform(-10, 10))
    mirrored = bool(rng.random() < 0.5)
    anatomy_offset = (float(rng.uniform(-0.06, 0.06)), float(rng.uniform(-0.05, 0.05)))

    # Optic disc: 1/7-1/6 of the field diameter, ~0.3 of the radius nasal.
    disc_radius = float(rng.uniform(1 / 7, 1 / 6))
    disc_centre = (float(rng.uniform(0.27, 0.36)), float(rng.uniform(-0.06, 0.04)))
    disc_elongation = float(rng.uniform(1.03, 1.15))
    if label == "glaucoma":
        cup_to_disc = float(
            np.clip(
                GLAUCOMA_CUP_TO_DISC[0] + 0.3 * grade + rng.normal(0, 0.02), *GLAUCOMA_CUP_TO_DISC
            )
        )
        cup_aspect = float(rng.uniform(0.8, 0.95))
        notch_room = max(0.0, 0.97 / cup_to_disc - 1.0)
        site = rng.choice(["inferior", "superior", "both"], p=[0.55, 0.25, 0.2])
        depth = notch_room * rng.uniform(0.6, 1.0) * (0.5 + 0.5 * grade)
        cup_notch_inferior = depth if site in ("inferior", "both") else 0.0
        cup_notch_superior = depth if site in ("superior", "both") else 0.0
        disc_pallor = 0.2 + 0.45 * grade + float(rng.uniform(-0.05, 0.05))
        peripapillary_atrophy = float(rng.uniform(0.3, 1.0))
    else:
        cup_to_disc = float(rng.uniform(*NORMAL_CUP_TO_DISC))
        cup_aspect = float(rng.uniform(0.95, 1.15))
        cup_notch_inferior = cup_notch_superior = 0.0
        disc_pallor = float(rng.uniform(0.0, 0.15))
        peripapillary_atrophy = float(rng.uniform(0.0, 0.6)) if rng.random() < 0.4 else 0.0
    cup_offset = float(rng.uniform(-0.15, 0.0))

    # Macula: fovea ~2.5 disc diameters temporal of the disc, slightly below it.
    fovea_centre = (
        disc_centre[0] - 5.0 * disc_radius * rng.uniform(0.92, 1.08),
        disc_centre[1] + disc_radius * rng.uniform(0.1, 0.6),
    )
    macula_radius = float(rng.uniform(0.11, 0.15))
    macula_depth = float(rng.uniform(0.2, 0.4))
    foveal_reflex = float(rng.uniform(0.0, 1.0))

    first, second = rng.choice(len(_FUNDUS_PALETTE), size=2, replace=False)
    mix = float(rng.uniform(0.0, 1.0))
    colour = (1 - mix) * _FUNDUS_PALETTE[first] + mix * _FUNDUS_PALETTE[second]
    red, green, blue = (colour * rng.uniform(0.95, 1.05, 3)).tolist()
    texture_amplitude = float(rng.uniform(0.02, 0.09))
    tigroid = float(rng.uniform(0.2, 1.0)) if rng.random() < 0.35 else 0.0
    vignetting = float(rng.uniform(0.2, 0.7))
    illumination_tilt = (float(rng.uniform(-0.25, 0.25)), float(rng.uniform(-0.25, 0.25)))
    illumination_blotch = float(rng.uniform(0.0, 0.12))
    disc_glow = float(rng.uniform(0.9, 1.15))
    vessel_redness = float(rng.uniform(0.0, 1.0))
    vessel_contrast = float(rng.uniform(0.6, 1.0))

    cup = CupShape.of_disc(
        disc_centre,
        disc_radius,
        disc_elongation,
        cup_to_disc,
        cup_aspect,
        cup_offset,
        cup_notch_superior,
        cup_notch_inferior,
    )
    vessels = sample_vessel_tree(
        rng,
        cup,
        disc_radius,
        fovea_centre,
        anatomy_offset,
        glaucoma=label == "glaucoma",
    )

    lesions: tuple[Lesion, ...] = ()
    if label == "diabetic_retinopathy":
        lesions = sample_dr_lesions(
            rng, grade, n, field_radius_px, disc_centre, disc_radius, fovea_centre, anatomy_offset
        )

    if label == "cataract":
        # Forward scatter of the lens: a Gaussian core plus a wide halo.
        lo, hi = CATARACT_BLUR_FRACTION
        blur_sigma_px = n * (lo + (hi - lo) * grade) * float(rng.uniform(0.9, 1.1))
        scatter_fraction = 0.1 + 0.3 * grade
        haze = 0.06 + 0.3 * grade + float(rng.uniform(-0.04, 0.04))
        contrast = 1.0 - (0.05 + 0.2 * grade) * float(rng.uniform(0.8, 1.0))
    else:
        # Mostly well focused; some defocus, far below a cataract's blur.
        blur_sigma_px = n * SHARP_BLUR_FRACTION * float(rng.uniform(0.0, 1.0)) ** 2
        scatter_fraction = 0.0
        haze = 0.0
        contrast = 1.0
    haze_centre = (float(rng.uniform(-0.3, 0.3)), float(rng.uniform(-0.3, 0.3)))

    exposure = float(np.exp(rng.uniform(np.log(0.7), np.log(1.3))))
    white_balance = (
        float(rng.uniform(0.88, 1.08)),
        float(rng.uniform(0.8, 1.15)),
        float(rng.uniform(0.7, 1.4)),
    )
    saturation = float(rng.uniform(0.75, 1.3))
    gamma = float(rng.uniform(0.8, 1.25))
    rim_flare = float(rng.uniform(0.1, 0.35)) if rng.random() < 0.35 else 0.0
    rim_flare_angle = float(rng.uniform(-math.pi, math.pi))
    sensor_noise = float(rng.uniform(0.5, 1.5)) / 255.0
    black_level = float(rng.uniform(0.0, 6.0)) / 255.0
    lens_artefacts = sample_lens_artefacts(rng)
    resolution = float(rng.uniform(*RESOLUTION_RANGE)) if rng.random() < 0.5 else 1.0
    jpeg_quality = int(rng.integers(JPEG_QUALITY_RANGE[0], JPEG_QUALITY_RANGE[1] + 1))
    texture_seed = int(rng.integers(0, 2**63 - 1))

    return FundusParams(
        label=label,
        severity=float(severity),
        image_size=n,
        field_centre_px=(float(field_centre_px[0]), float(field_centre_px[1])),
        field_radius_px=float(field_radius_px),
        rotation_deg=rotation_deg,
        mirrored=mirrored,
        anatomy_offset=anatomy_offset,
        field_shape=field_shape,
        disc_centre=disc_centre,
        disc_radius=disc_radius,
        disc_elongation=disc_elongation,
        cup_to_disc=cup_to_disc,
        cup_aspect=cup_aspect,
        cup_offset=cup_offset,
        cup_notch_superior=float(cup_notch_superior),
        cup_notch_inferior=float(cup_notch_inferior),
        disc_pallor=float(np.clip(disc_pallor, 0, 1)),
        peripapillary_atrophy=peripapillary_atrophy,
        fovea_centre=(float(fovea_centre[0]), float(fovea_centre[1])),
        macula_radius=macula_radius,
        macula_depth=macula_depth,
        foveal_reflex=foveal_reflex,
        fundus_colour=(red, green, blue),
        texture_amplitude=texture_amplitude,
        tigroid=tigroid,
        vignetting=vignetting,
        illumination_tilt=illumination_tilt,
        illumination_blotch=illumination_blotch,
        disc_glow=disc_glow,
        vessel_redness=vessel_redness,
        vessel_contrast=vessel_contrast,
        vessels=vessels,
        lesions=lesions,
        blur_sigma_px=float(blur_sigma_px),
        scatter_fraction=float(scatter_fraction),
        haze=float(np.clip(haze, 0, 0.9)),
        haze_centre=haze_centre,
        contrast=float(contrast),
        exposure=exposure,
        white_balance=white_balance,
        saturation=saturation,
        gamma=gamma,
        rim_flare=rim_flare,
        rim_flare_angle=rim_flare_angle,
        lens_artefacts=lens_artefacts,
        sensor_noise=sensor_noise,
        black_level=black_level,
        resolution=resolution,
        jpeg_quality=jpeg_quality,
        texture_seed=texture_seed,
    )


def _check_label(label: str) -> None:
    """Raise a ValueError naming the classes when ``label`` is not one of them."""
    if label not in CLASS_NAMES:
        raise ValueError(f"label={label!r} is not a class; use one of {', '.join(CLASS_NAMES)}")

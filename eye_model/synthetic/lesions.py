"""Diabetic retinopathy lesions: sampling them round the posterior pole, and painting them.

Microaneurysms, blot and flame haemorrhages, hard exudates (clusters and
partial rings round the macula) and cotton-wool spots along the arcades.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from eye_model.synthetic.params import FundusParams, Lesion, Lobe
from eye_model.synthetic.raster import SUPERSAMPLE, rgb

# Light transmitted through a haemorrhage, and the colours of the pale lesions.
_BLOOD_TRANSMISSION = rgb(0.45, 0.16, 0.18)
_EXUDATE_COLOUR = rgb(1.0, 0.88, 0.50)
_COTTON_WOOL_COLOUR = rgb(0.96, 0.90, 0.80)


def _random_position(
    rng: np.random.Generator,
    centre: np.ndarray,
    spread: float,
    disc_centre: tuple[float, float],
    keep_out: float,
    offset: tuple[float, float],
) -> np.ndarray:
    """A point near ``centre`` inside the field and outside the disc (field units)."""
    point = centre
    for _ in range(50):
        point = centre + rng.normal(0.0, spread, 2)
        in_field = math.hypot(point[0] + offset[0], point[1] + offset[1]) < 0.92
        off_disc = math.hypot(point[0] - disc_centre[0], point[1] - disc_centre[1]) > keep_out
        if in_field and off_disc:
            break
    return point


def _blob_lobes(
    rng: np.random.Generator,
    centre: np.ndarray,
    radius: float,
    count: int,
    aspect: float = 1.0,
    angle: float = 0.0,
) -> tuple[Lobe, ...]:
    """Overlapping ellipses that make an irregular blotch."""
    lobes = [(float(centre[0]), float(centre[1]), radius * aspect, radius, angle)]
    for _ in range(count - 1):
        shift = rng.normal(0.0, 0.45 * radius, 2)
        r = radius * rng.uniform(0.5, 0.85)
        lobes.append(
            (
                float(centre[0] + shift[0]),
                float(centre[1] + shift[1]),
                r * rng.uniform(0.8, 1.3),
                r,
                float(rng.uniform(0, math.pi)),
            )
        )
    return tuple(lobes)


def sample_dr_lesions(
    rng: np.random.Generator,
    grade: float,
    image_size: int,
    field_radius_px: float,
    disc_centre: tuple[float, float],
    disc_radius: float,
    fovea: tuple[float, float],
    offset: tuple[float, float],
) -> tuple[Lesion, ...]:
    """Sample diabetic retinopathy lesions; sizes scale with the image size."""
    # Convert fractions of the image side into field units.
    px = image_size / field_radius_px
    disc = np.array(disc_centre)
    fov = np.array(fovea)
    pole = 0.6 * fov + 0.4 * disc
    keep_out = 1.4 * disc_radius
    lesions: list[Lesion] = []

    for _ in range(max(4, int(rng.poisson(6 + 30 * grade)))):
        centre = _random_position(rng, pole, 0.38, disc_centre, keep_out, offset)
        # 0.4-0.8 % of the image across: 6-12 px in a 1,500 px photograph, one to two
        # widths of a small vessel, as in scikit-image's microaneurysms.png crop; at 224 px
        # they are 1-2 px, the least a network can see.
        radius = px * rng.uniform(0.002, 0.004)
        lobes: tuple[Lobe, ...] = ((float(centre[0]), float(centre[1]), radius, radius, 0.0),)
        lesions.append(
            Lesion(
                "microaneurysm",
                (float(centre[0]), float(centre[1])),
                radius,
                lobes,
                float(rng.uniform(0.45, 0.85)),
            )
        )
    for _ in range(max(1, int(rng.poisson(1.5 + 11 * grade)))):
        centre = _random_position(rng, pole, 0.42, disc_centre, keep_out, offset)
        # Dot haemorrhages (round, a little larger than microaneurysms) to blot ones.
        radius = px * float(np.exp(rng.uniform(np.log(0.006), np.log(0.024))))
        lobes = _blob_lobes(
            rng, centre, radius, 1 if radius < px * 0.01 else int(rng.integers(2, 5))
        )
        lesions.append(
            Lesion(
                "haemorrhage",
                (float(centre[0]), float(centre[1])),
                radius,
                lobes,
                float(rng.uniform(0.6, 0.88)),
            )
        )
    for _ in range(int(rng.poisson(2.5 * grade))):
        # Flame haemorrhages lie along the nerve fibres, radial to the disc.
        centre = _random_position(rng, disc, 0.3, disc_centre, 1.6 * disc_radius, offset)
        radius = px * rng.uniform(0.01, 0.018)
        angle = math.atan2(centre[1] - disc[1], centre[0] - disc[0]) + rng.normal(0, 0.2)
        along = (math.cos(angle), math.sin(angle))
        # Feathered streaks: thin ellipses fanning out from a base.
        lobes = tuple(
            (
                float(centre[0] + along[0] * k * radius),
                float(centre[1] + along[1] * k * radius),
                radius * (2.2 - 0.4 * k),
                radius * (0.6 - 0.12 * k),
                float(angle + rng.normal(0, 0.12)),
            )
            for k in range(3)
        )
        lesions.append(
            Lesion(
                "haemorrhage",
                (float(centre[0]), float(centre[1])),
                radius,
                lobes,
                float(rng.uniform(0.6, 0.85)),
            )
        )
    for _ in range(max(1, int(rng.poisson(0.5 + 3.5 * grade)))):
        # Hard exudates: clusters or partial rings round the macula.
        angle = rng.uniform(0, 2 * math.pi)
        cluster = fov + rng.uniform(0.08, 0.4) * np.array([math.cos(angle), math.sin(angle)])
        ring = rng.random() < 0.35
        ring_radius = rng.uniform(0.05, 0.1)
        for k in range(3 + int(rng.poisson(3 + 9 * grade))):
            if ring:
                a = rng.uniform(0, 1.6 * math.pi) + angle
                centre = (
                    cluster
                    + ring_radius * np.array([math.cos(a), math.sin(a)])
                    + rng.normal(0, 0.01, 2)
                )
            else:
                centre = cluster + rng.normal(0, 0.045 + 0.004 * k, 2)
            if math.hypot(centre[0] + offset[0], centre[1] + offset[1]) > 0.93:
                continue
            if math.hypot(*(centre - disc)) < keep_out:
                continue
            # Sizes spread from dots to small coalescent plaques.
            radius = px * float(np.exp(rng.uniform(np.log(0.004), np.log(0.011))))
            lobes = _blob_lobes(rng, centre, radius, int(rng.integers(1, 4)))
            lesions.append(
                Lesion(
                    "exudate",
                    (float(centre[0]), float(centre[1])),
                    radius,
                    lobes,
                    float(rng.uniform(0.75, 0.95)),
                )
            )
    for _ in range(int(rng.poisson(max(0.0, 4.0 * grade - 0.6)))):
        # Cotton-wool spots: along the arcades, within ~3 disc diameters.
        side = 1.0 if rng.random() < 0.5 else -1.0
        centre = _random_position(
            rng, disc + np.array([-0.35, 0.3 * side]), 0.2, disc_centre, 1.5 * disc_radius, offset
        )
        radius = px * rng.uniform(0.015, 0.028)
        lobes = _blob_lobes(
            rng,
            centre,
            radius,
            int(rng.integers(2, 4)),
            aspect=1.3,
            angle=float(rng.uniform(0, math.pi)),
        )
        lesions.append(
            Lesion(
                "cotton_wool",
                (float(centre[0]), float(centre[1])),
                radius,
                lobes,
                float(rng.uniform(0.55, 0.8)),
            )
        )
    return tuple(lesions)


def _lobe_polygons(params: FundusParams, lobes: list[Lobe]) -> np.ndarray:
    """Supersampled pixel polygons of lesion lobes (rotated ellipses), (lobes, 16 * 2)."""
    lobe = np.asarray(lobes, dtype=np.float64)
    t = np.linspace(0, 2 * math.pi, 16, endpoint=False)
    ex = lobe[:, 2:3] * np.cos(t)
    ey = lobe[:, 3:4] * np.sin(t)
    cos, sin = np.cos(lobe[:, 4:5]), np.sin(lobe[:, 4:5])
    points = np.stack(
        [lobe[:, 0:1] + cos * ex - sin * ey, lobe[:, 1:2] + sin * ex + cos * ey], axis=-1
    )
    pixels = params.to_pixels(points.reshape(-1, 2)) * SUPERSAMPLE
    return pixels.reshape(len(lobes), -1)


def paint_lesions(params: FundusParams, scene: np.ndarray) -> None:
    """Paint red lesions, hard exudates and cotton-wool spots (in place)."""
    n = params.image_size
    big = n * SUPERSAMPLE
    groups = {
        "red": ("microaneurysm", "haemorrhage"),
        "exudate": ("exudate",),
        "cotton_wool": ("cotton_wool",),
    }
    for group, kinds in groups.items():
        lesions = [lesion for lesion in params.lesions if lesion.kind in kinds]
        if not lesions:
            continue
        lobes = [lobe for lesion in lesions for lobe in lesion.lobes]
        fills = [int(round(255 * lesion.opacity)) for lesion in lesions for _ in lesion.lobes]
        mask = Image.new("L", (big, big), 0)
        draw = ImageDraw.Draw(mask)
        for polygon, fill in zip(_lobe_polygons(params, lobes), fills, strict=True):
            draw.polygon(polygon.tolist(), fill=fill)
        if group == "cotton_wool":
            mean_radius = float(np.mean([lesion.radius for lesion in lesions]))
            blur = 0.45 * mean_radius * params.field_radius_px
        else:
            # Soft edges of about a pixel at 1,500 px; more would erase microaneurysms.
            blur = 0.0012 * n
        mask = mask.reduce(SUPERSAMPLE)
        if blur >= 0.3:
            mask = mask.filter(ImageFilter.GaussianBlur(blur))
        a = np.asarray(mask, dtype=np.float32) / 255.0
        if group == "red":
            scene *= 1.0 - a * (1.0 - _BLOOD_TRANSMISSION)
        elif group == "exudate":
            scene[:] = scene * (1.0 - a) + a * _EXUDATE_COLOUR
        else:
            scene[:] = scene * (1.0 - a) + a * _COTTON_WOOL_COLOUR

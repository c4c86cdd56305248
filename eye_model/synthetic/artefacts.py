"""What the camera adds that is not the eye: the field's shape and the lens's artefacts.

Fundus cameras differ in their field stop (a round field, a round field cut by
the sensor at the top and bottom, a small notch or tab that marks the
orientation) and in what their optics add to every photograph (dust on the
lens or sensor, soft dark specks; reflections from the cornea and the lens,
soft bright patches). All of it is drawn alike for every class, so that a
classifier learns to look past it. Positions here are in image-oriented field
coordinates ``(qx, qy)`` (the field radius is 1, x to the right, y down,
before any anatomy mirroring or rotation).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class FieldShape:
    """The field stop: a circle, optionally cut by chords and marked by a notch.

    Attributes:
        chord_top: the field ends at ``qy = -chord_top`` (1.0 or more: no cut).
        chord_bottom: the field ends at ``qy = chord_bottom`` (1.0 or more: no cut).
        notch_angle: direction of the notch from the field centre, radians (y down).
        notch_size: half-side of the square notch, field units (0: no notch).
    """

    chord_top: float = 1.0
    chord_bottom: float = 1.0
    notch_angle: float = 0.0
    notch_size: float = 0.0

    def inside_distance(self, qx: np.ndarray, qy: np.ndarray, field_r: np.ndarray) -> np.ndarray:
        """Signed distance into the field (field units): > 0 inside, < 0 outside."""
        distance = np.minimum(
            1.0 - field_r, np.minimum(self.chord_top + qy, self.chord_bottom - qy)
        )
        if self.notch_size > 0:
            nx, ny = math.cos(self.notch_angle), math.sin(self.notch_angle)
            # A square tab of the surround reaching into the field from its rim.
            out_of_notch = np.maximum(np.abs(qx - nx), np.abs(qy - ny)) - self.notch_size
            distance = np.minimum(distance, np.maximum(out_of_notch, -1.0))
        return distance


@dataclass(frozen=True)
class Speck:
    """A soft spot added by the optics: dust (darker) or a reflection (brighter).

    Attributes:
        centre: ``(qx, qy)`` in image-oriented field units.
        radius: field units.
        strength: -1-1; below 0 dims the spot by that share, above 0 adds that much light.
    """

    centre: tuple[float, float]
    radius: float
    strength: float


@dataclass(frozen=True)
class LensArtefacts:
    """Everything the optics add: specks and a central corneal/lens reflex.

    Attributes:
        specks: dust and small reflections.
        central_reflex: brightness of a diffuse reflex near the centre (0: none).
        reflex_centre: its ``(qx, qy)``.
        reflex_radius: its radius, field units.
    """

    specks: tuple[Speck, ...] = ()
    central_reflex: float = 0.0
    reflex_centre: tuple[float, float] = (0.0, 0.0)
    reflex_radius: float = 0.2


def sample_field_shape(rng: np.random.Generator, cropped: bool) -> FieldShape:
    """A field stop: chord cuts on some cameras, an orientation notch on others.

    Args:
        rng: random generator (consumed).
        cropped: the field is larger than the image, so the image edges already cut it;
            no chords are drawn then.
    """
    chord_top = chord_bottom = 1.0
    if not cropped and rng.random() < 0.25:
        chord_top = float(rng.uniform(0.8, 0.95))
        chord_bottom = chord_top if rng.random() < 0.7 else float(rng.uniform(0.8, 0.95))
    notch_size = float(rng.uniform(0.025, 0.05)) if rng.random() < 0.3 else 0.0
    return FieldShape(
        chord_top=chord_top,
        chord_bottom=chord_bottom,
        notch_angle=float(rng.uniform(-math.pi, math.pi)),
        notch_size=notch_size,
    )


def sample_lens_artefacts(rng: np.random.Generator) -> LensArtefacts:
    """Dust specks on about half the cameras, small reflections, a central reflex on some."""
    specks: list[Speck] = []
    for _ in range(int(rng.poisson(1.5)) if rng.random() < 0.5 else 0):
        # Dust out of focus: large, faint, soft; never as dark as a haemorrhage.
        r, a = 0.85 * math.sqrt(rng.random()), rng.uniform(-math.pi, math.pi)
        specks.append(
            Speck(
                (r * math.cos(a), r * math.sin(a)),
                float(rng.uniform(0.02, 0.06)),
                -float(rng.uniform(0.05, 0.18)),
            )
        )
    for _ in range(int(rng.poisson(0.6))):
        r, a = 0.9 * math.sqrt(rng.random()), rng.uniform(-math.pi, math.pi)
        specks.append(
            Speck(
                (r * math.cos(a), r * math.sin(a)),
                float(rng.uniform(0.03, 0.1)),
                float(rng.uniform(0.03, 0.1)),
            )
        )
    central = float(rng.uniform(0.03, 0.12)) if rng.random() < 0.3 else 0.0
    return LensArtefacts(
        specks=tuple(specks),
        central_reflex=central,
        reflex_centre=(float(rng.uniform(-0.15, 0.15)), float(rng.uniform(-0.15, 0.15))),
        reflex_radius=float(rng.uniform(0.1, 0.3)),
    )


def paint_lens_artefacts(
    artefacts: LensArtefacts, qx: np.ndarray, qy: np.ndarray, scene: np.ndarray
) -> np.ndarray:
    """Dim dust specks and add reflections to a (3, n, n) scene; returns the new scene."""
    light = np.zeros(qx.shape, dtype=np.float32)
    dim = np.ones(qx.shape, dtype=np.float32)
    for speck in artefacts.specks:
        profile = np.exp(
            -((qx - speck.centre[0]) ** 2 + (qy - speck.centre[1]) ** 2) / (2 * speck.radius**2)
        )
        if speck.strength < 0:
            dim *= 1.0 + speck.strength * profile
        else:
            light += speck.strength * profile
    if artefacts.central_reflex:
        cx, cy = artefacts.reflex_centre
        d2 = (qx - cx) ** 2 + (qy - cy) ** 2
        light += artefacts.central_reflex * np.exp(-d2 / (2 * artefacts.reflex_radius**2))
    # Reflections are bluish-white: the light source seen in a mirror, not the fundus.
    return scene * dim + light * np.array([0.9, 0.95, 1.0], dtype=np.float32).reshape(3, 1, 1)

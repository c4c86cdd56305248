"""The parameters of one synthetic fundus photograph, and the ranges of the class signs.

Lengths are in field units (the field radius is 1, x to the right, y down, a
right-eye layout with the disc nasal at x > 0) unless a name ends in ``_px``;
:meth:`FundusParams.to_pixels` maps them into the image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from eye_model.synthetic.artefacts import FieldShape, LensArtefacts

#: Version of the generator's output: the same seed gives other images under another
#: version, so it keys the synthetic-data cache (:func:`eye_model.data.synthetic_cache_dir`).
GENERATOR_VERSION = "3"

#: Range of the severity drawn for a diseased image when none is given (0-1).
SEVERITY_RANGE: tuple[float, float] = (0.3, 1.0)
#: Vertical cup-to-disc ratio of healthy discs (also used for cataract and DR).
NORMAL_CUP_TO_DISC: tuple[float, float] = (0.2, 0.45)
#: Vertical cup-to-disc ratio of glaucomatous discs, from mild to severe.
GLAUCOMA_CUP_TO_DISC: tuple[float, float] = (0.6, 0.9)
#: Gaussian blur (sigma of the core) of cataract images as a fraction of the
#: image size; a wide scatter halo (6 %) is mixed in on top.
CATARACT_BLUR_FRACTION: tuple[float, float] = (0.01, 0.035)
#: Largest defocus blur (sigma) of images without cataract, as a fraction of the image size.
SHARP_BLUR_FRACTION = 0.003
#: JPEG quality range of the written files (camera and archive variation).
JPEG_QUALITY_RANGE: tuple[int, int] = (40, 95)
#: Range of the camera's resolution as a fraction of the image size (1: full resolution).
RESOLUTION_RANGE: tuple[float, float] = (0.5, 1.0)
#: Smallest image side accepted, in pixels.
MIN_IMAGE_SIZE = 32

#: Kinds of diabetic retinopathy lesion, in the order they are sampled.
LESION_KINDS: tuple[str, ...] = ("microaneurysm", "haemorrhage", "exudate", "cotton_wool")

#: One lobe of a lesion: an ellipse (x, y, rx, ry, angle), field units and radians.
Lobe = tuple[float, float, float, float, float]


@dataclass(frozen=True, eq=False)
class Vessel:
    """One vessel as a polyline in field units.

    Attributes:
        points: (n, 2) x, y positions in field units.
        widths: (n,) calibre at each point, in field units.
        kind: "artery" or "vein".
    """

    points: np.ndarray
    widths: np.ndarray
    kind: str


@dataclass(frozen=True)
class Lesion:
    """One lesion: a union of ellipses (lobes) in field units.

    Attributes:
        kind: one of :data:`LESION_KINDS`.
        centre: x, y in field units.
        radius: overall radius in field units.
        lobes: (x, y, rx, ry, angle) per lobe; positions and radii in field units,
            angle in radians.
        opacity: 0-1.
    """

    kind: str
    centre: tuple[float, float]
    radius: float
    lobes: tuple[Lobe, ...]
    opacity: float


@dataclass(frozen=True)
class CupShape:
    """Cup outline: an ellipse stretched towards notches of the rim (field units)."""

    centre: tuple[float, float]
    radius_x: float
    radius_y: float
    notch_superior: float
    notch_inferior: float

    @classmethod
    def of_disc(
        cls,
        disc_centre: tuple[float, float],
        disc_radius: float,
        disc_elongation: float,
        cup_to_disc: float,
        cup_aspect: float,
        cup_offset: float,
        notch_superior: float,
        notch_inferior: float,
    ) -> CupShape:
        """The cup of a disc; ``cup_to_disc`` is the vertical ratio, offsets in disc radii."""
        return cls(
            centre=(disc_centre[0] + cup_offset * disc_radius, disc_centre[1]),
            radius_x=cup_to_disc * cup_aspect * disc_radius,
            radius_y=cup_to_disc * disc_radius * disc_elongation,
            notch_superior=notch_superior,
            notch_inferior=notch_inferior,
        )

    def stretch(self, angle: np.ndarray | float) -> np.ndarray | float:
        """Radial stretch of the cup at ``angle`` (radians, y down: +pi/2 is inferior)."""
        width = 0.5
        inferior = np.exp(
            -((((angle - math.pi / 2 + math.pi) % (2 * math.pi) - math.pi) / width) ** 2)
        )
        superior = np.exp(
            -((((angle + math.pi / 2 + math.pi) % (2 * math.pi) - math.pi) / width) ** 2)
        )
        return 1.0 + self.notch_inferior * inferior + self.notch_superior * superior

    def edge_radius(self, angle: float) -> float:
        """Distance from the cup centre to its edge along ``angle`` (field units)."""
        base = 1.0 / math.hypot(math.cos(angle) / self.radius_x, math.sin(angle) / self.radius_y)
        return float(base * self.stretch(angle))


@dataclass(frozen=True, eq=False)
class FundusParams:
    """Every random choice behind one synthetic fundus photograph.

    Lengths are in field units (field radius = 1, right-eye layout) unless the
    name ends in ``_px``; colours are linear RGB in 0-1.
    """

    label: str
    severity: float
    image_size: int
    # camera geometry
    field_centre_px: tuple[float, float]
    field_radius_px: float
    rotation_deg: float
    mirrored: bool
    anatomy_offset: tuple[float, float]
    field_shape: FieldShape
    # optic disc
    disc_centre: tuple[float, float]
    disc_radius: float
    disc_elongation: float
    cup_to_disc: float
    cup_aspect: float
    cup_offset: float
    cup_notch_superior: float
    cup_notch_inferior: float
    disc_pallor: float
    peripapillary_atrophy: float
    # macula
    fovea_centre: tuple[float, float]
    macula_radius: float
    macula_depth: float
    foveal_reflex: float
    # retina and illumination
    fundus_colour: tuple[float, float, float]
    texture_amplitude: float
    tigroid: float
    vignetting: float
    illumination_tilt: tuple[float, float]
    illumination_blotch: float
    disc_glow: float
    vessel_redness: float
    vessel_contrast: float
    # content
    vessels: tuple[Vessel, ...]
    lesions: tuple[Lesion, ...]
    # optics and camera
    blur_sigma_px: float
    scatter_fraction: float
    haze: float
    haze_centre: tuple[float, float]
    contrast: float
    exposure: float
    white_balance: tuple[float, float, float]
    saturation: float
    gamma: float
    rim_flare: float
    rim_flare_angle: float
    lens_artefacts: LensArtefacts
    sensor_noise: float
    black_level: float
    resolution: float
    jpeg_quality: int
    texture_seed: int

    @property
    def disc_centre_px(self) -> tuple[float, float]:
        """Centre of the optic disc in image pixels (x, y)."""
        x, y = self.to_pixels(np.array([self.disc_centre]))[0]
        return float(x), float(y)

    @property
    def disc_radius_px(self) -> float:
        """Vertical (largest) radius of the optic disc, in pixels."""
        return self.disc_radius * self.disc_elongation * self.field_radius_px

    @property
    def fovea_centre_px(self) -> tuple[float, float]:
        """Centre of the fovea in image pixels (x, y)."""
        x, y = self.to_pixels(np.array([self.fovea_centre]))[0]
        return float(x), float(y)

    @property
    def cup_shape(self) -> CupShape:
        """Outline of the cup (field units)."""
        return CupShape.of_disc(
            self.disc_centre,
            self.disc_radius,
            self.disc_elongation,
            self.cup_to_disc,
            self.cup_aspect,
            self.cup_offset,
            self.cup_notch_superior,
            self.cup_notch_inferior,
        )

    @property
    def lesion_count(self) -> int:
        """Number of lesions of all kinds."""
        return len(self.lesions)

    @property
    def lesion_counts(self) -> dict[str, int]:
        """Number of lesions of each kind of :data:`LESION_KINDS`."""
        counts = dict.fromkeys(LESION_KINDS, 0)
        for lesion in self.lesions:
            counts[lesion.kind] += 1
        return counts

    def to_pixels(self, points: np.ndarray) -> np.ndarray:
        """Map (n, 2) points from field units into image pixels (x, y)."""
        shifted = np.asarray(points, dtype=np.float64) + np.asarray(self.anatomy_offset)
        bx = -shifted[:, 0] if self.mirrored else shifted[:, 0]
        by = shifted[:, 1]
        theta = math.radians(self.rotation_deg)
        cos, sin = math.cos(theta), math.sin(theta)
        qx = cos * bx - sin * by
        qy = sin * bx + cos * by
        cx, cy = self.field_centre_px
        return np.stack([cx + self.field_radius_px * qx, cy + self.field_radius_px * qy], axis=1)

    def sign_mask(self) -> np.ndarray:
        """Where the sign of this photograph's class lies, as a boolean (size, size) mask.

        glaucoma: the optic disc and its rim (twice the disc radius); diabetic_retinopathy:
        each lesion, widened by a twelfth of the picture's side; cataract: a whole-view blur
        and haze, so the photographed field; normal: the field. Explanations are checked
        against it (``tests/model/test_explain_signs.py``, ``scripts/explain_signs_report.py``).
        """
        size = self.image_size
        ys, xs = np.mgrid[0:size, 0:size] + 0.5
        mask = np.zeros((size, size), bool)
        if self.label == "glaucoma":
            cx, cy = self.disc_centre_px
            mask |= (xs - cx) ** 2 + (ys - cy) ** 2 <= (2 * self.disc_radius_px) ** 2
        elif self.label == "diabetic_retinopathy":
            margin = size / 12
            for lesion in self.lesions:
                ((cx, cy),) = self.to_pixels(np.array([lesion.centre]))
                radius = lesion.radius * self.field_radius_px + margin
                mask |= (xs - cx) ** 2 + (ys - cy) ** 2 <= radius**2
        else:
            cx, cy = self.field_centre_px
            mask |= (xs - cx) ** 2 + (ys - cy) ** 2 <= self.field_radius_px**2
        return mask

"""Synthetic colour fundus photographs, so training and tests work offline.

The generator paints a posterior-pole fundus photograph the way a fundus
camera records it: a dark surround outside a circular field, an orange-red
retina with choroidal texture and illumination fall-off, a yellowish optic
disc with its paler cup, a branching vessel tree of arteries and veins
arching round a darker macula, then the signs of one of the four classes of
:data:`eye_model.config.CLASS_NAMES`, each graded by a severity in [0.3, 1]:

- ``cataract``: a blurred, hazy, washed-out, low-contrast view.
- ``diabetic_retinopathy``: microaneurysms, blot and flame haemorrhages,
  hard exudates clustered round the macula, cotton-wool spots.
- ``glaucoma``: a cup-to-disc ratio of 0.6-0.9, a paler disc, notching of
  the neuroretinal rim, vessels bending at the cup edge.
- ``normal``: none of these, sharp.

Camera variation (exposure, colour temperature, gamma, field size and
position, a small rotation, left or right eye, JPEG quality) is drawn from
the same distributions for every class, so a classifier cannot tell the
classes apart by global colour alone.

Sampling and drawing are split: :func:`sample_fundus_params` draws every
random choice into a :class:`FundusParams` (so tests can read the class
signs, e.g. the cup-to-disc ratio), and :func:`draw_fundus` paints it
deterministically. Anatomy is laid out for a right eye in "field units"
(the field radius is 1, x to the right, y down, the disc nasal at x > 0);
:meth:`FundusParams.to_pixels` maps it into the image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from scipy import ndimage
from tqdm import tqdm

from eye_model.config import CLASS_NAMES

#: Range of the severity drawn for a diseased image when none is given (0-1).
SEVERITY_RANGE: tuple[float, float] = (0.3, 1.0)
#: Vertical cup-to-disc ratio of healthy discs (also used for cataract and DR).
NORMAL_CUP_TO_DISC: tuple[float, float] = (0.2, 0.45)
#: Vertical cup-to-disc ratio of glaucomatous discs, from mild to severe.
GLAUCOMA_CUP_TO_DISC: tuple[float, float] = (0.6, 0.9)
#: Gaussian blur (sigma of the core) of cataract images as a fraction of the
#: image size; a wide scatter halo (6 %) is mixed in on top.
CATARACT_BLUR_FRACTION: tuple[float, float] = (0.01, 0.035)
#: JPEG quality range of the written files (camera variation).
JPEG_QUALITY_RANGE: tuple[int, int] = (75, 95)
#: Smallest image side accepted, in pixels.
MIN_IMAGE_SIZE = 32

LESION_KINDS: tuple[str, ...] = ("microaneurysm", "haemorrhage", "exudate", "cotton_wool")

# Vessel and lesion masks are drawn at this multiple of the image size and
# box-reduced, which anti-aliases sub-pixel vessels cheaply.
_SUPERSAMPLE = 2
# Path step of the vessel tracer, in field units.
_VESSEL_STEP = 0.02
# Heading noise kernels of the vessel tracer (unit gain on white noise).
_KERNEL_SPAN = 30
_TORTUOSITY_KERNEL = np.exp(-0.5 * (np.arange(-15, 16) / 5.0) ** 2)
_TORTUOSITY_KERNEL /= np.sqrt((_TORTUOSITY_KERNEL**2).sum())
_RIPPLE_KERNEL = np.ones(_KERNEL_SPAN + 1) / np.sqrt(_KERNEL_SPAN + 1)
# Fundus colour of a lightly and of a heavily pigmented eye (linear RGB, 0-1).
_LIGHT_FUNDUS = np.array([0.93, 0.47, 0.20])
_DARK_FUNDUS = np.array([0.66, 0.24, 0.09])


def _rgb(red: float, green: float, blue: float) -> np.ndarray:
    """A colour shaped (3, 1, 1) to broadcast over a channel-first (3, n, n) scene."""
    return np.array([red, green, blue], dtype=np.float32).reshape(3, 1, 1)


# Scenes are channel-first (3, n, n): numpy broadcasts a (3, 1, 1) colour over
# them several times faster than over a trailing axis of 3.
# Light transmitted through blood: veins darker and bluer than arteries.
_VEIN_TRANSMISSION = _rgb(0.50, 0.22, 0.30)
_ARTERY_TRANSMISSION = _rgb(0.70, 0.40, 0.48)
_BLOOD_TRANSMISSION = _rgb(0.45, 0.16, 0.18)
_EXUDATE_COLOUR = _rgb(1.0, 0.88, 0.50)
_COTTON_WOOL_COLOUR = _rgb(0.96, 0.90, 0.80)
_DISC_RIM_COLOUR = _rgb(0.96, 0.62, 0.27)
_DISC_MARGIN_COLOUR = _rgb(0.95, 0.52, 0.24)
_DISC_CUP_COLOUR = _rgb(1.0, 0.9, 0.72)
_ATROPHY_COLOUR = _rgb(0.85, 0.62, 0.45)
_MACULA_ABSORPTION = _rgb(0.7, 1.0, 1.0)
_REFLEX_COLOUR = _rgb(0.9, 0.9, 0.8)
_HAZE_COLOUR = _rgb(0.80, 0.75, 0.64)
_FLARE_COLOUR = _rgb(1.0, 0.85, 0.6)


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
    lobes: tuple[tuple[float, float, float, float, float], ...]
    opacity: float


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
    gamma: float
    rim_flare: float
    rim_flare_angle: float
    sensor_noise: float
    black_level: float
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
    def cup_shape(self) -> _CupShape:
        """Outline of the cup (field units)."""
        return _CupShape.of_disc(
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


def make_image_rng(seed: int, class_index: int, image_index: int) -> np.random.Generator:
    """Random generator of one dataset image, independent of generation order.

    Args:
        seed: dataset seed (>= 0).
        class_index: index of the class in :data:`CLASS_NAMES`.
        image_index: index of the image within its class.

    Returns:
        A generator seeded from (seed, class_index, image_index).
    """
    if seed < 0:
        raise ValueError(f"seed={seed} must be 0 or above")
    return np.random.default_rng(np.random.SeedSequence([seed, class_index, image_index]))


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

    # Camera geometry: some cameras crop the field at the top and bottom.
    if rng.random() < 0.25:
        field_radius_px = n * rng.uniform(0.50, 0.54)
    else:
        field_radius_px = n * rng.uniform(0.44, 0.49)
    field_centre_px = (n / 2 + n * rng.uniform(-0.02, 0.02), n / 2 + n * rng.uniform(-0.02, 0.02))
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

    pigmentation = float(rng.beta(2.0, 2.0))
    red, green, blue = ((1 - pigmentation) * _LIGHT_FUNDUS + pigmentation * _DARK_FUNDUS).tolist()
    texture_amplitude = float(rng.uniform(0.03, 0.07))
    tigroid = float(rng.uniform(0.2, 1.0)) if rng.random() < 0.35 else 0.0
    vignetting = float(rng.uniform(0.35, 0.6))
    illumination_tilt = (float(rng.uniform(-0.12, 0.12)), float(rng.uniform(-0.12, 0.12)))

    cup = _CupShape.of_disc(
        disc_centre,
        disc_radius,
        disc_elongation,
        cup_to_disc,
        cup_aspect,
        cup_offset,
        cup_notch_superior,
        cup_notch_inferior,
    )
    vessels = _sample_vessel_tree(
        rng,
        cup,
        disc_radius,
        fovea_centre,
        anatomy_offset,
        glaucoma=label == "glaucoma",
    )

    lesions: tuple[Lesion, ...] = ()
    if label == "diabetic_retinopathy":
        lesions = _sample_dr_lesions(
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
        # A well-focused camera: at most ~0.6 px at 512 px.
        blur_sigma_px = n * float(rng.uniform(0.0, 0.0012))
        scatter_fraction = 0.0
        haze = 0.0
        contrast = 1.0
    haze_centre = (float(rng.uniform(-0.3, 0.3)), float(rng.uniform(-0.3, 0.3)))

    exposure = float(np.exp(rng.uniform(np.log(0.78), np.log(1.22))))
    white_balance = (
        float(rng.uniform(0.92, 1.06)),
        float(rng.uniform(0.9, 1.1)),
        float(rng.uniform(0.8, 1.3)),
    )
    gamma = float(rng.uniform(0.85, 1.15))
    rim_flare = float(rng.uniform(0.1, 0.35)) if rng.random() < 0.35 else 0.0
    rim_flare_angle = float(rng.uniform(-math.pi, math.pi))
    sensor_noise = float(rng.uniform(0.5, 1.5)) / 255.0
    black_level = float(rng.uniform(0.0, 6.0)) / 255.0
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
        vessels=vessels,
        lesions=lesions,
        blur_sigma_px=float(blur_sigma_px),
        scatter_fraction=float(scatter_fraction),
        haze=float(np.clip(haze, 0, 0.9)),
        haze_centre=haze_centre,
        contrast=float(contrast),
        exposure=exposure,
        white_balance=white_balance,
        gamma=gamma,
        rim_flare=rim_flare,
        rim_flare_angle=rim_flare_angle,
        sensor_noise=sensor_noise,
        black_level=black_level,
        jpeg_quality=jpeg_quality,
        texture_seed=texture_seed,
    )


def draw_fundus(params: FundusParams) -> Image.Image:
    """Paint a fundus photograph from its parameters (deterministic).

    Args:
        params: the parameters from :func:`sample_fundus_params`.

    Returns:
        An RGB image of ``params.image_size`` x ``params.image_size`` pixels.
    """
    rng = np.random.default_rng(params.texture_seed)
    grid = _FieldGrid.build(params)

    scene = _paint_retina(params, grid, rng)
    _paint_macula(params, grid, scene)
    cup_window = _paint_disc(params, grid, scene)
    _paint_vessels(params, grid, scene, cup_window)
    if params.lesions:
        _paint_lesions(params, scene)

    illumination = 1.0 - params.vignetting * np.clip(grid.field_r, 0, 1) ** 2.5
    illumination *= (
        1.0 + params.illumination_tilt[0] * grid.qx + params.illumination_tilt[1] * grid.qy
    )
    scene *= illumination

    scene = _apply_optics(params, grid, scene)
    scene = _apply_camera(params, grid, scene, rng)
    image = np.clip(scene * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return Image.fromarray(np.ascontiguousarray(image.transpose(1, 2, 0)))


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


def generate_dataset(
    out_dir: str | Path,
    per_class: int,
    image_size: int = 512,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, int]:
    """Write a synthetic fundus dataset in the ImageFolder layout.

    Files are ``out_dir/<class>/<class>_<00000>.jpg``. Each image is seeded
    from (seed, class index, image index), so the same seed gives
    byte-identical files whatever the order of generation. Earlier files of
    this naming pattern beyond ``per_class`` are removed so the folder holds
    exactly the returned counts.

    Args:
        out_dir: the dataset folder (created if missing).
        per_class: number of images per class (>= 0).
        image_size: side of the square images, in pixels.
        seed: dataset seed (>= 0).
        progress: show a tqdm progress bar.

    Returns:
        The number of images written per class.

    Raises:
        ValueError: for a negative per_class or seed, or a too small image_size.
    """
    if per_class < 0:
        raise ValueError(f"per_class={per_class} must be 0 or above")
    if seed < 0:
        raise ValueError(f"seed={seed} must be 0 or above")
    if image_size < MIN_IMAGE_SIZE:
        raise ValueError(f"image_size={image_size} is too small; use {MIN_IMAGE_SIZE} or more")
    root = Path(out_dir)
    for label in CLASS_NAMES:
        folder = root / label
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob(f"{label}_*.jpg"):
            index = stale.stem[len(label) + 1 :]
            if index.isdigit() and int(index) >= per_class:
                stale.unlink()
    jobs = [(ci, label, i) for ci, label in enumerate(CLASS_NAMES) for i in range(per_class)]
    counts = dict.fromkeys(CLASS_NAMES, 0)
    for class_index, label, index in tqdm(
        jobs, desc="synthetic fundus", unit="img", disable=not progress
    ):
        params = sample_fundus_params(label, make_image_rng(seed, class_index, index), image_size)
        image = draw_fundus(params)
        image.save(
            root / label / f"{label}_{index:05d}.jpg", format="JPEG", quality=params.jpeg_quality
        )
        counts[label] += 1
    return counts


# --------------------------------------------------------------------------
# sampling helpers


def _check_label(label: str) -> None:
    if label not in CLASS_NAMES:
        raise ValueError(f"label={label!r} is not a class; use one of {', '.join(CLASS_NAMES)}")


@dataclass(frozen=True)
class _CupShape:
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
    ) -> _CupShape:
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


def _trace_path(
    rng: np.random.Generator,
    start: np.ndarray,
    heading: float,
    length: float,
    turn: float = 0.0,
    turn_at: float = 0.3,
    turn_width: float = 0.15,
    curvature: float = 0.0,
    wiggle: float = 0.08,
) -> tuple[np.ndarray, np.ndarray]:
    """Trace a smooth vessel path.

    Args:
        rng: random generator.
        start: (2,) start point in field units.
        heading: initial direction in radians (y down).
        length: path length in field units.
        turn: total turn concentrated round ``turn_at`` (radians).
        turn_at: where the turn happens along the path (field units).
        turn_width: spread of the turn (field units).
        curvature: constant extra curvature (radians per field unit).
        wiggle: amplitude of the tortuosity (radians).

    Returns:
        (n, 2) points and (n,) headings.
    """
    steps = max(3, int(length / _VESSEL_STEP) + 1)
    t = np.arange(steps) * _VESSEL_STEP
    headings = heading + curvature * t
    if turn:
        bump = np.exp(-0.5 * ((t - turn_at) / turn_width) ** 2)
        headings += turn * (np.cumsum(bump) - bump[0]) / bump.sum()
    # Tortuosity: heading noise smoothed over ~0.1 field units, plus a finer ripple.
    noise = rng.standard_normal((2, steps + _KERNEL_SPAN))
    headings += wiggle * np.convolve(noise[0], _TORTUOSITY_KERNEL, mode="valid")[:steps]
    headings += 0.25 * wiggle * np.convolve(noise[1], _RIPPLE_KERNEL, mode="valid")[:steps]
    # Complex steps: cumulated, then viewed as (x, y) pairs without a copy.
    path = np.empty(steps, dtype=np.complex128)
    path[0] = complex(start[0], start[1])
    path[1:] = path[0] + np.cumsum(_VESSEL_STEP * np.exp(1j * headings[:-1]))
    return path.view(np.float64).reshape(steps, 2), headings


def _clip_to_field(points: np.ndarray, offset: tuple[float, float]) -> int:
    """Number of leading points of a path that stay inside the field."""
    radius2 = (points[:, 0] + offset[0]) ** 2 + (points[:, 1] + offset[1]) ** 2
    outside = radius2 > 1.0
    return int(outside.argmax()) if outside.any() else len(points)


def _grow_vessel(
    rng: np.random.Generator,
    out: list[Vessel],
    prefix: np.ndarray,
    start: np.ndarray,
    heading: float,
    length: float,
    width: float,
    kind: str,
    depth: int,
    offset: tuple[float, float],
    fovea: np.ndarray,
    turn: float = 0.0,
    turn_at: float = 0.3,
    turn_width: float = 0.15,
    curvature: float = 0.0,
) -> None:
    """Trace one vessel, spawn its branches recursively and append them to ``out``."""
    points, headings = _trace_path(
        rng, start, heading, length, turn, turn_at, turn_width, curvature
    )
    keep = _clip_to_field(points, offset)
    if keep < 3:
        return
    points, headings = points[:keep], headings[:keep]
    t = np.arange(keep) * _VESSEL_STEP
    widths = width * (1.0 - 0.25 * t / max(length, 1e-6))
    # Branch points: the parent narrows after each (Murray-like split).
    first = 0.15 if depth == 0 else 0.06
    spacing = 0.2 if depth == 0 else 0.16
    branch_at = first + rng.exponential(spacing)
    while depth < 2 and branch_at < t[-1] - 0.08:
        i = int(branch_at / _VESSEL_STEP)
        side = 1.0 if rng.random() < 0.5 else -1.0
        child_heading = float(headings[i] + side * rng.uniform(0.45, 1.0))
        child_width = widths[i] * rng.uniform(0.45, 0.72)
        widths[i:] *= rng.uniform(0.88, 0.96)
        child_length = min(0.8, max(0.12, rng.uniform(0.25, 0.6) * math.sqrt(child_width / 0.01)))
        # Branches aimed at the fovea stop short of it (avascular zone).
        to_x, to_y = fovea[0] - points[i, 0], fovea[1] - points[i, 1]
        if math.cos(child_heading - math.atan2(to_y, to_x)) > 0.7:
            child_length = min(child_length, 0.8 * math.hypot(to_x, to_y))
        if child_width > 0.0025 and child_length > 0.06:
            _grow_vessel(
                rng,
                out,
                np.empty((0, 2)),
                points[i],
                child_heading,
                child_length,
                float(child_width),
                kind,
                depth + 1,
                offset,
                fovea,
                curvature=float(side * rng.uniform(-1.2, 0.4)),
            )
        branch_at += 0.06 + rng.exponential(spacing)
    # Tips taper to a thread.
    taper = np.clip((t[-1] - t) / 0.12, 0.0, 1.0)
    widths = widths * (0.35 + 0.65 * taper)
    if len(prefix):
        points = np.concatenate([prefix, points])
        widths = np.concatenate([np.full(len(prefix), widths[0]), widths])
    out.append(Vessel(points=points, widths=widths, kind=kind))


@dataclass(frozen=True, eq=False)
class _Route:
    """A main vessel leaving the disc (field units, radians)."""

    kind: str
    start: np.ndarray
    heading: float
    length: float
    width: float
    turn: float = 0.0
    turn_at: float = 0.3
    turn_width: float = 0.2
    from_cup: bool = True


def _sample_vessel_tree(
    rng: np.random.Generator,
    cup: _CupShape,
    disc_radius: float,
    fovea: tuple[float, float],
    offset: tuple[float, float],
    glaucoma: bool,
) -> tuple[Vessel, ...]:
    """Sample the retinal vessel tree leaving the disc (right-eye layout, field units)."""
    origin = np.array(cup.centre) + np.array([0.08, 0.0]) * disc_radius
    # The central vein and artery emerge side by side in the cup (artery nasal)
    # and split into superior and inferior trunks.
    trunks = {
        "vein": origin
        + np.array([rng.uniform(-0.2, -0.05), rng.uniform(-0.08, 0.08)]) * disc_radius,
        "artery": origin
        + np.array([rng.uniform(0.05, 0.2), rng.uniform(-0.08, 0.08)]) * disc_radius,
    }
    routes: list[_Route] = []
    for s in (-1.0, 1.0):  # superior (up), inferior (down)
        for kind, width in (
            ("vein", rng.uniform(0.022, 0.028)),
            ("artery", rng.uniform(0.015, 0.019)),
        ):
            # Temporal arcade: up (or down), then curving temporally round the macula.
            h0 = s * (math.pi / 2 + rng.uniform(0.05, 0.35))
            h1 = s * (math.pi + rng.uniform(0.05, 0.35))
            routes.append(
                _Route(
                    kind,
                    trunks[kind],
                    h0,
                    length=rng.uniform(1.3, 1.7),
                    width=width,
                    turn=h1 - h0,
                    turn_at=rng.uniform(0.3, 0.45),
                    turn_width=rng.uniform(0.16, 0.26),
                )
            )
            # Nasal vessel: splits off the trunk near the disc margin, then runs nasally.
            split = trunks[kind] + rng.uniform(0.6, 1.0) * disc_radius * np.array(
                [math.cos(h0), math.sin(h0)]
            )
            h0 = s * (math.pi / 2 - rng.uniform(0.3, 0.7))
            h1 = s * rng.uniform(0.25, 0.8)
            routes.append(
                _Route(
                    kind,
                    split,
                    h0,
                    length=rng.uniform(0.8, 1.1),
                    width=0.75 * width,
                    turn=h1 - h0,
                    turn_at=rng.uniform(0.15, 0.35),
                    turn_width=0.15,
                    from_cup=False,
                )
            )
    # Small nasal radial vessels, then small papillomacular vessels.
    for count, heading, length, widths in (
        (int(rng.integers(1, 4)), 0.0, (0.5, 0.8), (0.007, 0.011)),
        (int(rng.integers(1, 3)), math.pi, (0.3, 0.5), (0.005, 0.008)),
    ):
        for _ in range(count):
            kind = str(rng.choice(["artery", "vein"]))
            routes.append(
                _Route(
                    kind,
                    trunks[kind] + rng.uniform(-0.3, 0.3, 2) * disc_radius,
                    heading + rng.uniform(-0.45, 0.45),
                    length=rng.uniform(*length),
                    width=rng.uniform(*widths),
                    turn=rng.uniform(-0.3, 0.3),
                )
            )

    vessels: list[Vessel] = []
    fovea_point = np.asarray(fovea, dtype=np.float64)
    for route in routes:
        heading = float(route.heading)
        if glaucoma and route.from_cup:
            # Vessels run down into the deep cup, climb out at its edge and
            # bend along the rim before leaving the disc (bayoneting).
            side = 1.0 if rng.random() < 0.5 else -1.0
            angles = heading + side * np.linspace(0.0, rng.uniform(0.25, 0.5), 5)
            rim = np.array(cup.centre) + np.array(
                [cup.edge_radius(a) * np.array([math.cos(a), math.sin(a)]) for a in angles]
            )
            prefix = np.concatenate([np.linspace(route.start, rim[0], 5, endpoint=False), rim])
            start = rim[-1] + _VESSEL_STEP * np.array([math.cos(heading), math.sin(heading)])
        else:
            prefix = np.empty((0, 2))
            start = route.start
        _grow_vessel(
            rng,
            vessels,
            prefix,
            start,
            heading,
            float(route.length),
            float(route.width),
            route.kind,
            0,
            offset,
            fovea_point,
            turn=float(route.turn),
            turn_at=float(route.turn_at),
            turn_width=float(route.turn_width),
        )
    # Veins first so arteries are drawn over them where they cross.
    vessels.sort(key=lambda v: v.kind != "vein")
    return tuple(vessels)


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
) -> tuple[tuple[float, float, float, float, float], ...]:
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


def _sample_dr_lesions(
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
        radius = px * rng.uniform(0.0045, 0.0075)
        lobes = ((float(centre[0]), float(centre[1]), radius, radius, 0.0),)
        lesions.append(
            Lesion(
                "microaneurysm",
                (float(centre[0]), float(centre[1])),
                radius,
                lobes,
                float(rng.uniform(0.75, 0.95)),
            )
        )
    for _ in range(max(1, int(rng.poisson(1.5 + 11 * grade)))):
        centre = _random_position(rng, pole, 0.42, disc_centre, keep_out, offset)
        radius = px * rng.uniform(0.011, 0.026)
        lobes = _blob_lobes(rng, centre, radius, int(rng.integers(2, 5)))
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


# --------------------------------------------------------------------------
# drawing helpers


@dataclass(frozen=True, eq=False)
class _FieldGrid:
    """Per-pixel coordinates of an image: field-relative and anatomical."""

    qx: np.ndarray  # (x - cx) / R, image orientation
    qy: np.ndarray
    field_r: np.ndarray  # distance from the field centre / R
    u: np.ndarray  # anatomical x (field units, right-eye layout)
    v: np.ndarray  # anatomical y

    @classmethod
    def build(cls, params: FundusParams) -> _FieldGrid:
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


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Zero-mean smooth noise of about unit std with ``cells`` features across."""
    cells = max(2, min(cells, size))
    field = _upsample(rng.standard_normal((cells, cells), dtype=np.float32), size)
    return field / max(float(field.std()), 1e-6)


def _smoothstep(edge0: float, edge1: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - edge0) / (edge1 - edge0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _paint_retina(params: FundusParams, grid: _FieldGrid, rng: np.random.Generator) -> np.ndarray:
    """Base orange-red retina with choroidal texture, (3, n, n) float32.

    The texture is built at a quarter of the resolution and upsampled once.
    """
    n = params.image_size
    low = max(16, n // 4)
    texture = (
        0.55 * _smooth_noise(rng, low, 6)
        + 0.45 * _smooth_noise(rng, low, 24)
        + 0.35 * _smooth_noise(rng, low, low)
    )
    shade = 1.0 + params.texture_amplitude * texture
    if params.tigroid:
        shade *= 1.0 + params.tigroid * 0.22 * _choroidal_streaks(rng, params, low)
    chroma = 1.0 + 0.5 * params.texture_amplitude * _smooth_noise(rng, low, 10)
    shade = _upsample(shade, n)
    chroma = _upsample(chroma, n)
    scene = np.asarray(params.fundus_colour, dtype=np.float32).reshape(3, 1, 1) * shade
    # Green and blue vary a little more than red (pigment patches).
    scene[1:] *= chroma
    return scene


def _upsample(field: np.ndarray, size: int) -> np.ndarray:
    """Bicubic upsampling of a float32 field to ``size`` x ``size``."""
    if field.shape[0] == size:
        return field
    return np.asarray(
        Image.fromarray(field.astype(np.float32)).resize((size, size), Image.Resampling.BICUBIC)
    )


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
    angle = np.arctan2(dy, dx) + 0.35 * _smooth_noise(rng, size, 5)
    polar = rng.standard_normal((rings + 3, spokes)).astype(np.float32)
    a_idx = (angle / (2 * math.pi) + 0.5) * spokes
    r_idx = np.clip(field_r, 0.0, 1.5) / 1.5 * rings + 1.0
    noise = ndimage.map_coordinates(polar, [r_idx, a_idx], order=1, mode="grid-wrap")
    noise /= max(float(noise.std()), 1e-6)
    bands = 0.5 * np.tanh(1.5 * noise)
    return bands * np.clip(field_r * 1.6 - 0.6, 0.0, 1.0)


def _pixel_window(
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


def _channels(window: tuple[slice, slice]) -> tuple[slice, slice, slice]:
    """Index of a pixel window across all channels of a (3, n, n) scene."""
    return (slice(None), window[0], window[1])


def _paint_macula(params: FundusParams, grid: _FieldGrid, scene: np.ndarray) -> None:
    """Darken the macula and fovea, add the foveal reflex (in place)."""
    window = _pixel_window(params, params.fovea_centre, 3.2 * params.macula_radius)
    fx, fy = params.fovea_centre
    d2 = (grid.u[window] - fx) ** 2 + (grid.v[window] - fy) ** 2
    macula = np.exp(-d2 / (2 * params.macula_radius**2))
    fovea = np.exp(-d2 / (2 * 0.03**2))
    darkening = params.macula_depth * macula + 0.25 * fovea
    local = scene[_channels(window)]
    local *= 1.0 - darkening * _MACULA_ABSORPTION
    if params.foveal_reflex > 0.3:
        reflex = np.exp(-d2 / (2 * 0.007**2))
        local += 0.22 * params.foveal_reflex * reflex * _REFLEX_COLOUR


def _paint_disc(
    params: FundusParams, grid: _FieldGrid, scene: np.ndarray
) -> tuple[tuple[slice, slice], np.ndarray]:
    """Paint the optic disc, its cup and peripapillary atrophy (in place).

    Returns:
        The pixel window of the disc and the cup mask (0-1) inside it.
    """
    window = _pixel_window(
        params, params.disc_centre, 2.2 * params.disc_radius * params.disc_elongation
    )
    u, v = grid.u[window], grid.v[window]
    dx, dy = params.disc_centre
    rd = params.disc_radius
    du = (u - dx) / rd
    dv = (v - dy) / (rd * params.disc_elongation)
    rho = np.hypot(du, dv)
    disc = 1.0 - _smoothstep(0.95, 1.03, rho)

    cup_shape = params.cup_shape
    cu = (u - cup_shape.centre[0]) / cup_shape.radius_x
    cv = (v - cup_shape.centre[1]) / cup_shape.radius_y
    cup_rho = np.hypot(cu, cv) / cup_shape.stretch(
        np.arctan2(cv * cup_shape.radius_y, cu * cup_shape.radius_x)
    )
    deep = params.label == "glaucoma"
    cup = (
        1.0 - (_smoothstep(0.85, 1.03, cup_rho) if deep else _smoothstep(0.8, 1.05, cup_rho))
    ) * disc

    local = scene[_channels(window)]
    # Peripapillary glow and atrophy crescent (temporal side, u < 0).
    halo = np.exp(-(np.clip(rho - 1.0, 0.0, None) ** 2) / 0.05) * (1.0 - disc)
    local *= 1.0 + 0.04 * halo
    if params.peripapillary_atrophy:
        temporal = np.clip(-du / np.maximum(rho, 1e-6), 0.0, 1.0) ** 1.5
        crescent = (_smoothstep(0.95, 1.0, rho) - _smoothstep(1.15, 1.3, rho)) * temporal
        crescent *= 0.7 * params.peripapillary_atrophy
        local[:] = local * (1.0 - crescent) + crescent * _ATROPHY_COLOUR

    rim_colour = (1 - params.disc_pallor) * _DISC_RIM_COLOUR + params.disc_pallor * _DISC_CUP_COLOUR
    # The healthy rim is pinker towards the margin, where the nerve fibre layer thickens.
    margin = _smoothstep(0.5, 1.0, rho) * (1.0 - params.disc_pallor)
    rim_colour = rim_colour * (1.0 - 0.3 * margin) + 0.3 * margin * _DISC_MARGIN_COLOUR
    brightness = 0.88 + 0.12 * np.clip(1.0 - rho**2, 0.0, 1.0)
    disc_colour = (rim_colour * (1.0 - cup) + _DISC_CUP_COLOUR * cup) * brightness
    local[:] = local * (1.0 - disc) + disc_colour * disc
    return window, cup


def _draw_mask_polyline(
    draw: ImageDraw.ImageDraw, points: np.ndarray, widths: np.ndarray, opacity: np.ndarray | float
) -> None:
    """Draw a tapering polyline (supersampled pixels) as chunks of constant width.

    Args:
        draw: the mask to draw on.
        points: (n, 2) supersampled pixel positions.
        widths: (n,) widths in supersampled pixels.
        opacity: 0-1, per point or one value.
    """
    chunk = 8
    starts = np.arange(0, len(points) - 1, chunk)
    middle = np.minimum(starts + chunk // 2, len(points) - 1)
    chunk_widths = widths[middle]
    fills = np.broadcast_to(np.asarray(opacity, dtype=np.float64), widths.shape)[middle]
    # Sub-pixel vessels: one pixel wide, fainter in proportion.
    thin = chunk_widths < _SUPERSAMPLE
    fills = np.where(thin, fills * chunk_widths / _SUPERSAMPLE, fills)
    line_widths = np.where(thin, _SUPERSAMPLE, np.rint(chunk_widths)).astype(int).tolist()
    levels = np.rint(255 * fills).astype(int).tolist()
    for start, level, line_width in zip(starts.tolist(), levels, line_widths, strict=True):
        piece = points[start : start + chunk + 1].ravel().tolist()
        draw.line(piece, fill=level, width=line_width, joint="curve")


def _paint_vessels(
    params: FundusParams,
    grid: _FieldGrid,
    scene: np.ndarray,
    cup_window: tuple[tuple[slice, slice], np.ndarray],
) -> None:
    """Paint arteries and veins with a central light reflex (in place)."""
    n = params.image_size
    big = n * _SUPERSAMPLE
    masks = {kind: Image.new("L", (big, big), 0) for kind in ("artery", "vein", "reflex")}
    draws = {kind: ImageDraw.Draw(mask) for kind, mask in masks.items()}
    scale = params.field_radius_px * _SUPERSAMPLE
    # One transform for all vessels, then split back per vessel.
    all_points = (
        params.to_pixels(np.concatenate([vessel.points for vessel in params.vessels]))
        * _SUPERSAMPLE
    )
    bounds = np.cumsum([len(vessel.points) for vessel in params.vessels])[:-1]
    for vessel, points in zip(params.vessels, np.split(all_points, bounds), strict=True):
        widths = vessel.widths * scale
        # Beer-Lambert: a thin blood column absorbs less than a thick one.
        opacity = 1.0 - np.exp(-vessel.widths / (0.006 if vessel.kind == "vein" else 0.0075))
        _draw_mask_polyline(draws[vessel.kind], points, widths, opacity)
        if widths[0] >= 3 * _SUPERSAMPLE:
            _draw_mask_polyline(draws["reflex"], points, widths * 0.25, 1.0)
    alpha = {
        kind: np.asarray(mask.reduce(_SUPERSAMPLE), dtype=np.float32) / 255.0
        for kind, mask in masks.items()
    }

    # Foveal avascular zone, and vessels hidden in the depth of the cup.
    fade = np.ones((n, n), dtype=np.float32)
    faz = _pixel_window(params, params.fovea_centre, 0.15)
    fx, fy = params.fovea_centre
    d2 = (grid.u[faz] - fx) ** 2 + (grid.v[faz] - fy) ** 2
    fade[faz] = 1.0 - np.exp(-((d2 / 0.06**2) ** 2))
    window, cup = cup_window
    fade[window] *= 1.0 - (0.8 if params.label == "glaucoma" else 0.2) * cup
    vein = alpha["vein"] * fade
    artery = alpha["artery"] * fade
    scene *= (1.0 - vein * (1.0 - _VEIN_TRANSMISSION)) * (
        1.0 - artery * (1.0 - _ARTERY_TRANSMISSION)
    )
    scene += 0.1 * alpha["reflex"] * artery


def _lobe_polygons(
    params: FundusParams, lobes: list[tuple[float, float, float, float, float]]
) -> np.ndarray:
    """Supersampled pixel polygons of lesion lobes (rotated ellipses), (lobes, 16 * 2)."""
    lobe = np.asarray(lobes, dtype=np.float64)
    t = np.linspace(0, 2 * math.pi, 16, endpoint=False)
    ex = lobe[:, 2:3] * np.cos(t)
    ey = lobe[:, 3:4] * np.sin(t)
    cos, sin = np.cos(lobe[:, 4:5]), np.sin(lobe[:, 4:5])
    points = np.stack(
        [lobe[:, 0:1] + cos * ex - sin * ey, lobe[:, 1:2] + sin * ex + cos * ey], axis=-1
    )
    pixels = params.to_pixels(points.reshape(-1, 2)) * _SUPERSAMPLE
    return pixels.reshape(len(lobes), -1)


def _paint_lesions(params: FundusParams, scene: np.ndarray) -> None:
    """Paint red lesions, hard exudates and cotton-wool spots (in place)."""
    n = params.image_size
    big = n * _SUPERSAMPLE
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
            blur = 0.004 * n if group == "red" else 0.0015 * n
        mask = mask.reduce(_SUPERSAMPLE)
        if blur >= 0.3:
            mask = mask.filter(ImageFilter.GaussianBlur(blur))
        a = np.asarray(mask, dtype=np.float32) / 255.0
        if group == "red":
            scene *= 1.0 - a * (1.0 - _BLOOD_TRANSMISSION)
        elif group == "exudate":
            scene[:] = scene * (1.0 - a) + a * _EXUDATE_COLOUR
        else:
            scene[:] = scene * (1.0 - a) + a * _COTTON_WOOL_COLOUR


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
    return np.stack([_upsample(ch, n) for ch in small])


def _field_mask(params: FundusParams, grid: _FieldGrid) -> np.ndarray:
    """Circular field aperture, 1 inside, 0 outside, with a one-pixel soft edge."""
    distance_px = (1.0 - grid.field_r) * params.field_radius_px
    return np.clip(distance_px + 0.5, 0.0, 1.0)


def _apply_optics(params: FundusParams, grid: _FieldGrid, scene: np.ndarray) -> np.ndarray:
    """Blur (defocus, lens opacity), haze and contrast loss inside the field."""
    if 0.25 <= params.blur_sigma_px < 1.5:
        # Slight defocus: the dark rim it pulls in is under a pixel wide.
        scene = ndimage.gaussian_filter(
            scene, sigma=(0, params.blur_sigma_px, params.blur_sigma_px)
        )
    elif params.blur_sigma_px >= 1.5:
        # Normalised convolution: blur only what is inside the field, so the
        # rim does not darken from the black surround.
        field = _field_mask(params, grid)
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


def _apply_camera(
    params: FundusParams, grid: _FieldGrid, scene: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Exposure, white balance, gamma, rim flare, field aperture and sensor noise."""
    gains = params.exposure * np.asarray(params.white_balance, dtype=np.float32).reshape(3, 1, 1)
    scene = np.clip(scene * gains, 0.0, 1.0) ** np.float32(1.0 / params.gamma)
    if params.rim_flare:
        direction = grid.qx * math.cos(params.rim_flare_angle) + grid.qy * math.sin(
            params.rim_flare_angle
        )
        towards = np.clip(direction / np.maximum(grid.field_r, 1e-6), 0.0, 1.0) ** 2
        band = np.exp(-(((1.0 - grid.field_r) / 0.06) ** 2))
        scene = scene + params.rim_flare * band * towards * _FLARE_COLOUR
    noise = rng.standard_normal(grid.field_r.shape, dtype=np.float32) * params.sensor_noise
    # The surround is the camera's black level with the same sensor noise.
    return (scene - params.black_level) * _field_mask(params, grid) + params.black_level + noise

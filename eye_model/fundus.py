"""Is it a gradable colour fundus photograph? A cheap check on a batch of network inputs.

A colour fundus photograph is a round (or, on a rectangular sensor, cropped-round) bright
field on a dark surround, red-orange because the choroid's blood reflects red light and
absorbs green and blue, lit well enough and sharp enough that vessels show. The check reads
that from a point-sampled grid of about 32 x 32 pixels of each decoded image (the network's
input, letterboxed on black by :func:`eye_model.preprocess.decode_image`), for the whole
batch at once in vectorised numpy: under 1 % of the network's time on a batch of 32.

The thresholds are set generously, far from every real fundus photo we have (scikit-image's
``retina.jpg`` and its variants) and from the generated training images, whose haziest
cataracts are the bound for colour and detail:

- ``too_dark``: the brightest 1 % of the picture is below 12 % of full scale (luma 30).
- ``no_fundus_field``: no dark surround (the darkest 2 % above luma 60), or no field standing
  out of it that spans a quarter of the picture, is filled in its middle and leaves at
  least two corners of its bounding box dark (a round field does; a rectangle does not).
- ``not_colour_fundus``: under 60 % of the field's middle is red-dominant (red at least
  1.08 x green and 1.25 x blue, as warm as a dense cataract's haze): greyscale, red-free, or
  a picture of something else.
- ``too_blurred``: the field shows (almost) no detail: its mean grid Laplacian is under
  0.5 % of its green level, a quarter of that of the haziest generated cataract (1.9 %):
  a dense cataract is hazy and must still be graded.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from eye_model.settings import env_name

#: ``fundus_check`` of an image that passed.
PASS = "pass"
#: Why an image is not a gradable fundus photograph, by ``fundus_check`` reason.
REASONS: dict[str, str] = {
    "too_dark": "it is too dark to grade (its brightest part is under 12 % of full brightness)",
    "no_fundus_field": "no round fundus field on a dark surround was found in it",
    "not_colour_fundus": (
        "its field is not the red-orange of a colour fundus photograph "
        "(greyscale, red-free or another kind of picture)"
    ),
    "too_blurred": "its field shows no detail (too blurred or flat to grade)",
}

#: Grid points per side the check samples (the decoded image's pixels, no averaging).
GRID = 32
#: Quantiles of luma taken as the picture's bright level and as its surround's level.
BRIGHT_QUANTILE, DARK_QUANTILE = 0.99, 0.02
#: Luma (0-255) the brightest 1 % of a gradable picture reaches at least.
MIN_BRIGHT_LUMA = 30.0
#: Most luma (0-255) of the darkest 2 % of a picture with a dark surround (a camera's black).
MAX_SURROUND_LUMA = 60.0
#: A pixel belongs to the field when above the surround by this share of bright - surround...
FIELD_SHARE = 0.2
#: ... and brighter than this luma (a camera's black surround with noise stays under it).
FIELD_FLOOR = 20.0
#: Smallest field extent, as a share of the picture's longer side.
MIN_FIELD_EXTENT = 0.25
#: Shortest field side over its longest (a field cut at top and bottom keeps 0.75 of it).
MIN_FIELD_ASPECT = 0.6
#: Share of the field's middle (70 % of its radius) that must be bright.
MIN_FIELD_FILL = 0.75
#: Bright share allowed in the two darkest corners of the field's bounding box.
MAX_CORNER_BRIGHT = 0.3
#: Corner zone of the bounding box: beyond this share of its half-width and half-height.
CORNER_ZONE = 0.8
#: A grid point is red-dominant (warm) when red is at least this multiple of green ...
RED_OVER_GREEN = 1.08
#: ... and this multiple of blue: a dense cataract's yellow-white haze (red about 1.15 x
#: green, 1.5 x blue) still counts; grey (about 1 x) and red-free (green-dominant) do not.
RED_OVER_BLUE = 1.25
#: Share of the field's middle that must be red-dominant.
MIN_RED_SHARE = 0.6
#: Mean |grid Laplacian| of green over the field's mean green, in %, below which it is flat.
MIN_DETAIL_PERCENT = 0.5

_LUMA = np.array([0.299, 0.587, 0.114], np.float32)


@dataclass(frozen=True)
class FundusMeasures:
    """What the check measured on each image of a batch (arrays of one value per image).

    Attributes:
        bright_luma: 99th percentile of luma, 0-255.
        surround_luma: 2nd percentile of luma (the surround of a fundus photo), 0-255.
        field_extent: the bright field's longer side over the picture's side, 0-1.
        field_aspect: the field's shorter side over its longer side, 0-1.
        field_fill: bright share of the field's middle, 0-1.
        corner_bright: bright share of the two darkest corners of the field's bounding box, 0-1.
        red_share: red-dominant share of the field's middle, 0-1.
        detail_percent: mean |grid Laplacian| of green over the mean green, in %.
    """

    bright_luma: np.ndarray
    surround_luma: np.ndarray
    field_extent: np.ndarray
    field_aspect: np.ndarray
    field_fill: np.ndarray
    corner_bright: np.ndarray
    red_share: np.ndarray
    detail_percent: np.ndarray


def _first_last(on: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index of the first and last True along axis 1 of an (n, g) boolean array."""
    first = on.argmax(axis=1)
    last = on.shape[1] - 1 - on[:, ::-1].argmax(axis=1)
    return first, last


def measure_fundus(images: np.ndarray) -> FundusMeasures:
    """Measure a batch of decoded images for :func:`judge_fundus`.

    Args:
        images: uint8 array (n, size, size, 3), RGB, as the network receives them.

    Returns:
        The measures, one value per image.
    """
    n, size = images.shape[0], images.shape[1]
    step = max(1, size // GRID)
    # One plane per colour, each contiguous: the arithmetic below then runs on packed arrays.
    red, green, blue = np.moveaxis(images[:, step // 2 :: step, step // 2 :: step, :], 3, 0).astype(
        np.float32
    )
    side = green.shape[1]
    luma = _LUMA[0] * red + _LUMA[1] * green + _LUMA[2] * blue
    flat = luma.reshape(n, -1)
    ranks = [int(DARK_QUANTILE * (flat.shape[1] - 1)), int(BRIGHT_QUANTILE * (flat.shape[1] - 1))]
    dark, bright = np.partition(flat, ranks, axis=1)[:, ranks].T
    # The field is what stands out of the surround, whether the camera's black is 0 or 40.
    threshold = np.maximum(FIELD_FLOOR, dark + FIELD_SHARE * (bright - dark))[:, None, None]
    field = luma > threshold

    # The field's bounding box from the rows and columns a quarter as full as the fullest:
    # a date or a label written in the surround does not stretch it.
    rows, cols = np.count_nonzero(field, axis=2), np.count_nonzero(field, axis=1)
    top, bottom = _first_last(4 * rows >= rows.max(axis=1, keepdims=True))
    left, right = _first_last(4 * cols >= cols.max(axis=1, keepdims=True))
    height, width = (bottom - top + 1).astype(np.float32), (right - left + 1).astype(np.float32)
    longer = np.maximum(height, width)
    index = np.arange(side, dtype=np.float32)
    # Box coordinates: -1 and 1 at its edges; radius coordinates: the field's radius is 1.
    u = (index[None, :] - ((left + right) / 2)[:, None]) / (width / 2)[:, None]
    v = (index[None, :] - ((top + bottom) / 2)[:, None]) / (height / 2)[:, None]
    in_box = (np.abs(v) <= 1)[:, :, None] & (np.abs(u) <= 1)[:, None, :]
    # The four corners of the box, apart: labels (date, eye, patient) often fill one or two.
    corner_shares = []
    for rows_side in (v <= -CORNER_ZONE, v >= CORNER_ZONE):
        for cols_side in (u <= -CORNER_ZONE, u >= CORNER_ZONE):
            corner = in_box & rows_side[:, :, None] & cols_side[:, None, :]
            corner_shares.append(
                np.count_nonzero(corner & field, axis=(1, 2))
                / np.maximum(np.count_nonzero(corner, axis=(1, 2)), 1)
            )
    darkest_corners = np.sort(np.stack(corner_shares, axis=1), axis=1)[:, :2].mean(axis=1)
    radius_x = np.square(u * (width / longer)[:, None])
    radius_y = np.square(v * (height / longer)[:, None])
    middle = in_box & (radius_y[:, :, None] + radius_x[:, None, :] < 0.7**2)
    middle_field = middle & field
    counted = np.maximum(np.count_nonzero(middle_field, axis=(1, 2)), 1)

    reddish = (red >= RED_OVER_GREEN * green) & (red >= RED_OVER_BLUE * blue)
    laplacian = np.abs(
        4 * green[:, 1:-1, 1:-1]
        - green[:, :-2, 1:-1]
        - green[:, 2:, 1:-1]
        - green[:, 1:-1, :-2]
        - green[:, 1:-1, 2:]
    )
    weights = middle_field.astype(np.float32)
    mean_green = np.einsum("nij,nij->n", green, weights) / counted
    inner = weights[:, 1:-1, 1:-1]
    mean_laplacian = np.einsum("nij,nij->n", laplacian, inner) / np.maximum(inner.sum((1, 2)), 1)
    return FundusMeasures(
        bright_luma=bright,
        field_extent=longer / side,
        field_aspect=np.minimum(height, width) / longer,
        field_fill=counted / np.maximum(np.count_nonzero(middle, axis=(1, 2)), 1),
        surround_luma=dark,
        corner_bright=darkest_corners,
        red_share=np.count_nonzero(reddish & middle_field, axis=(1, 2)) / counted,
        detail_percent=100.0 * mean_laplacian / np.maximum(mean_green, 1.0),
    )


def judge_fundus(measures: FundusMeasures) -> list[str]:
    """``pass`` or the first reason (of :data:`REASONS`, in that order) each image fails."""
    failures = (
        ("too_dark", measures.bright_luma < MIN_BRIGHT_LUMA),
        (
            "no_fundus_field",
            (measures.surround_luma > MAX_SURROUND_LUMA)
            | (measures.field_extent < MIN_FIELD_EXTENT)
            | (measures.field_aspect < MIN_FIELD_ASPECT)
            | (measures.field_fill < MIN_FIELD_FILL)
            | (measures.corner_bright > MAX_CORNER_BRIGHT),
        ),
        ("not_colour_fundus", measures.red_share < MIN_RED_SHARE),
        ("too_blurred", measures.detail_percent < MIN_DETAIL_PERCENT),
    )
    verdicts = np.full(len(measures.bright_luma), PASS, dtype=object)
    for reason, failed in reversed(failures):  # the first failure in the list wins
        verdicts[failed] = reason
    return [str(verdict) for verdict in verdicts]


def check_fundus(images: np.ndarray) -> list[str]:
    """``pass`` or the reason each image of a batch is not a gradable fundus photograph.

    Args:
        images: uint8 array (n, size, size, 3), RGB, as the network receives them.

    Returns:
        One ``fundus_check`` value per image.
    """
    if len(images) == 0:
        return []
    return judge_fundus(measure_fundus(images))


def refusal_message(reason: str, setting: str) -> str:
    """The ``error`` of a refused image: what is wrong and how to fix it.

    Args:
        reason: a key of :data:`REASONS`.
        setting: the environment variable that chooses the mode (named in the fix).
    """
    return (
        f"not a gradable fundus photograph: {REASONS.get(reason, reason)}; send a colour "
        f"fundus photograph (or set {setting}=warn to score it anyway)"
    )


def warning_message(reason: str) -> str:
    """The ``warning`` of an image that failed the check but was scored (mode ``warn``)."""
    return (
        f"may not be a gradable fundus photograph ({reason}: {REASONS.get(reason, reason)}); "
        "the prediction may be meaningless"
    )


def apply_fundus_check(
    rows: Sequence[Any],
    images: np.ndarray | Sequence[str],
    mode: str,
    setting: str | None = None,
) -> None:
    """Check a batch and record the verdicts on its scored rows (``ScoredImage``).

    Args:
        rows: the batch's rows, in the order of ``images``.
        images: their decoded pixels, uint8 (n, size, size, 3), or their verdicts
            (:func:`check_fundus`) computed already.
        mode: ``refuse`` (a failing row gets an ``error`` and no class), ``warn`` (it is
            scored with a warning) or ``off`` (nothing is checked; ``fundus_check`` stays None).
        setting: the environment variable that chooses the mode, named in the error
            (default: the one of the settings table).
    """
    if mode == "off":
        return
    setting = setting or env_name("fundus_check")
    verdicts = check_fundus(images) if isinstance(images, np.ndarray) else images
    for row, verdict in zip(rows, verdicts, strict=True):
        row.fundus_check = verdict
        if verdict == PASS:
            continue
        if mode == "warn":
            row.warnings.append(warning_message(verdict))
        else:
            row.error = refusal_message(verdict, setting)
            row.probabilities = None
            row.embedding = None

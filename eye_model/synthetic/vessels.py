"""The retinal vessel tree: sampling its paths from the disc, and painting it.

Arteries and veins leave the cup, arch round the macula and branch; in
glaucoma they bend at the edge of the deep cup (bayoneting).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from eye_model.synthetic.params import CupShape, FundusParams, Vessel
from eye_model.synthetic.raster import SUPERSAMPLE, FieldGrid, pixel_window, rgb

# Path step of the vessel tracer, in field units.
_VESSEL_STEP = 0.02
# Heading noise kernels of the vessel tracer (unit gain on white noise).
_KERNEL_SPAN = 30
_TORTUOSITY_KERNEL = np.exp(-0.5 * (np.arange(-15, 16) / 5.0) ** 2)
_TORTUOSITY_KERNEL /= np.sqrt((_TORTUOSITY_KERNEL**2).sum())
_RIPPLE_KERNEL = np.ones(_KERNEL_SPAN + 1) / np.sqrt(_KERNEL_SPAN + 1)

# Light transmitted through blood: veins darker and bluer than arteries. Cameras record
# vessels from dark brown to plainly red (``FundusParams.vessel_redness`` mixes them).
_VEIN_TRANSMISSION = rgb(0.50, 0.22, 0.30)
_ARTERY_TRANSMISSION = rgb(0.70, 0.40, 0.48)
_RED_VEIN_TRANSMISSION = rgb(0.72, 0.22, 0.25)
_RED_ARTERY_TRANSMISSION = rgb(0.88, 0.42, 0.42)


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


def sample_vessel_tree(
    rng: np.random.Generator,
    cup: CupShape,
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
    thin = chunk_widths < SUPERSAMPLE
    fills = np.where(thin, fills * chunk_widths / SUPERSAMPLE, fills)
    line_widths = np.where(thin, SUPERSAMPLE, np.rint(chunk_widths)).astype(int).tolist()
    levels = np.rint(255 * fills).astype(int).tolist()
    for start, level, line_width in zip(starts.tolist(), levels, line_widths, strict=True):
        piece = points[start : start + chunk + 1].ravel().tolist()
        draw.line(piece, fill=level, width=line_width, joint="curve")


def paint_vessels(
    params: FundusParams,
    grid: FieldGrid,
    scene: np.ndarray,
    cup_window: tuple[tuple[slice, slice], np.ndarray],
) -> None:
    """Paint arteries and veins with a central light reflex (in place)."""
    n = params.image_size
    big = n * SUPERSAMPLE
    masks = {kind: Image.new("L", (big, big), 0) for kind in ("artery", "vein", "reflex")}
    draws = {kind: ImageDraw.Draw(mask) for kind, mask in masks.items()}
    scale = params.field_radius_px * SUPERSAMPLE
    # One transform for all vessels, then split back per vessel.
    all_points = (
        params.to_pixels(np.concatenate([vessel.points for vessel in params.vessels])) * SUPERSAMPLE
    )
    bounds = np.cumsum([len(vessel.points) for vessel in params.vessels])[:-1]
    for vessel, points in zip(params.vessels, np.split(all_points, bounds), strict=True):
        widths = vessel.widths * scale
        # Beer-Lambert: a thin blood column absorbs less than a thick one.
        opacity = 1.0 - np.exp(-vessel.widths / (0.006 if vessel.kind == "vein" else 0.0075))
        _draw_mask_polyline(draws[vessel.kind], points, widths, opacity)
        if widths[0] >= 3 * SUPERSAMPLE:
            _draw_mask_polyline(draws["reflex"], points, widths * 0.25, 1.0)
    alpha = {
        kind: np.asarray(mask.reduce(SUPERSAMPLE), dtype=np.float32) / 255.0
        for kind, mask in masks.items()
    }

    # Foveal avascular zone, and vessels hidden in the depth of the cup.
    fade = np.ones((n, n), dtype=np.float32)
    faz = pixel_window(params, params.fovea_centre, 0.15)
    fx, fy = params.fovea_centre
    d2 = (grid.u[faz] - fx) ** 2 + (grid.v[faz] - fy) ** 2
    fade[faz] = 1.0 - np.exp(-((d2 / 0.06**2) ** 2))
    window, cup = cup_window
    fade[window] *= 1.0 - (0.8 if params.label == "glaucoma" else 0.2) * cup
    fade *= params.vessel_contrast
    vein = alpha["vein"] * fade
    artery = alpha["artery"] * fade
    red = params.vessel_redness
    vein_transmission = (1 - red) * _VEIN_TRANSMISSION + red * _RED_VEIN_TRANSMISSION
    artery_transmission = (1 - red) * _ARTERY_TRANSMISSION + red * _RED_ARTERY_TRANSMISSION
    scene *= (1.0 - vein * (1.0 - vein_transmission)) * (1.0 - artery * (1.0 - artery_transmission))
    scene += 0.1 * alpha["reflex"] * artery

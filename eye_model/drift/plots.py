"""Figures of the HTML drift report: reference against window, as base64 PNG text.

matplotlib is imported inside the functions (``matplotlib.figure.Figure``, no pyplot
and no global backend change), so importing the drift package stays cheap.
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from eye_model.config import CLASS_NAMES
from eye_model.drift.features import RecordArrays
from eye_model.drift.heuristics import drop_nonfinite

_N_CLASSES = len(CLASS_NAMES)


def _render_png(figure: Any) -> str:
    """Base64 text of a matplotlib figure saved as PNG."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=80)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def plot_class_distribution(reference: RecordArrays, window: RecordArrays, title: str) -> str:
    """Bars of the predicted-class shares, reference vs window (base64 PNG)."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.5, 3.2))
    figure.subplots_adjust(left=0.1, right=0.97, bottom=0.1, top=0.88)
    axes = figure.subplots()
    positions = np.arange(_N_CLASSES)
    for offset, (name, profile) in ((-0.2, ("reference", reference)), (0.2, ("window", window))):
        counts = np.bincount(profile.class_codes, minlength=_N_CLASSES)
        shares = counts / max(counts.sum(), 1)
        axes.bar(positions + offset, shares, width=0.4, label=name)
    axes.set_xticks(positions, CLASS_NAMES, fontsize=8)
    axes.set_ylabel("share of predictions")
    axes.set_ylim(0.0, min(1.0, axes.get_ylim()[1] * 1.25))
    axes.legend(ncols=2, loc="upper center")
    axes.set_title(title, fontsize=9)
    return _render_png(figure)


def plot_histograms(panels: Sequence[tuple[str, np.ndarray, np.ndarray, str]], title: str) -> str:
    """Grid of reference vs window density histograms (base64 PNG).

    Args:
        panels: (name, reference values, window values, caption) per panel.
        title: title of the figure.
    """
    from matplotlib.figure import Figure

    columns = 3
    rows = max(1, math.ceil(len(panels) / columns))
    # Fixed margins: constrained layout costs more than the drawing itself.
    height = 0.6 + 2.8 * rows  # inches: title band plus one 2.8-inch row per row of panels
    figure = Figure(figsize=(4.0 * columns, height))
    figure.subplots_adjust(
        left=0.05, right=0.98, bottom=0.35 / height, top=1.0 - 0.9 / height, wspace=0.25, hspace=0.6
    )
    grid = figure.subplots(rows, columns, squeeze=False)
    for axes in grid.ravel()[len(panels) :]:
        axes.set_visible(False)
    for axes, (name, reference_values, window_values, caption) in zip(
        grid.ravel(), panels, strict=False
    ):
        reference_values = drop_nonfinite(reference_values)
        window_values = drop_nonfinite(window_values)
        both = np.concatenate([reference_values[:1], window_values[:1]])
        if both.size == 0:
            axes.set_title(f"{name}: no data", fontsize=9)
            continue
        low = min(
            np.percentile(reference_values, 0.5) if reference_values.size else both.min(),
            np.percentile(window_values, 0.5) if window_values.size else both.min(),
        )
        high = max(
            np.percentile(reference_values, 99.5) if reference_values.size else both.max(),
            np.percentile(window_values, 99.5) if window_values.size else both.max(),
        )
        if not high > low:
            low, high = low - 0.5, high + 0.5
        edges = np.linspace(low, high, 41)
        for label, values in (("reference", reference_values), ("window", window_values)):
            if values.size:
                density, _ = np.histogram(values, bins=edges, density=True)
                axes.stairs(density, edges, label=label, fill=label == "reference", alpha=0.5)
        axes.set_title(f"{name}\n{caption}", fontsize=8)
        axes.tick_params(labelsize=7)
    grid.ravel()[0].legend(fontsize=7)
    figure.suptitle(title)
    return _render_png(figure)

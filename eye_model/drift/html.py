"""The self-contained HTML drift report, rendered from ``templates/drift_report.html.j2``.

The template ships in the package (``[tool.setuptools.package-data]``) and is read with
:mod:`importlib.resources`; Jinja2 (a dependency of MLflow) renders it with autoescaping
on, so feature names, notes and descriptions cannot inject markup.
"""

from __future__ import annotations

import functools
import math
from importlib import resources
from pathlib import Path

import jinja2
import pandas as pd

from eye_model.drift.config import EMBEDDING_FEATURE, PREDICTION_FEATURE
from eye_model.drift.features import extract_arrays
from eye_model.drift.plots import plot_class_distribution, plot_histograms
from eye_model.drift.report import DriftReport, resolve_target

#: File name used when the HTML report is written into a folder.
HTML_REPORT_NAME = "drift_report.html"
#: The template, inside the package's ``templates`` folder.
TEMPLATE_NAME = "drift_report.html.j2"


def format_number(value: float | None, digits: int = 3) -> str:
    """A number for the HTML tables ("-" for missing or non-finite).

    Args:
        value: the number.
        digits: decimals; values closer to 0 than ``10**-digits`` use scientific notation.

    Returns:
        The text.
    """
    if value is None or not math.isfinite(value):
        return "-"
    if value != 0 and abs(value) < 10 ** (-digits):
        return f"{value:.2e}"
    return f"{value:.{digits}f}"


@functools.cache
def load_template() -> jinja2.Template:
    """The report template, read from the installed package (autoescape on)."""
    text = (
        resources.files("eye_model.drift")
        .joinpath("templates", TEMPLATE_NAME)
        .read_text(encoding="utf-8")
    )
    environment = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    environment.filters["num"] = format_number
    environment.filters["yesno"] = lambda flag: "yes" if flag else "no"
    return environment.from_string(text)


def write_html_report(
    report: DriftReport, reference: pd.DataFrame, window: pd.DataFrame, path: str | Path
) -> Path:
    """Write a self-contained HTML drift report (plots embedded as base64 PNG).

    Args:
        report: the result of :func:`eye_model.drift.compute_drift` on ``reference`` and
            ``window``.
        reference: the reference profile.
        window: the window the report was computed on.
        path: a file path, or an existing folder (``drift_report.html`` is written in it).

    Returns:
        The path written.
    """
    config = report.config
    reference_arrays = extract_arrays(reference, config, what="reference")
    window_arrays = extract_arrays(window, config, what="window")
    by_feature = {(r.family, r.feature): r for r in report.features}

    def caption(family: str, feature: str) -> str:
        result = by_feature.get((family, feature))
        if result is None:
            return "not tested"
        mark = "DRIFT " if result.flag else ""
        return f"{mark}p={format_number(result.p_corrected)} effect={format_number(result.effect)}"

    images: list[tuple[str, str]] = [
        (
            "Predicted classes",
            plot_class_distribution(
                reference_arrays, window_arrays, caption("prediction", PREDICTION_FEATURE)
            ),
        )
    ]
    for family, features in config.scalar_features():
        panels = [
            (
                feature + (" (log1p)" if feature in config.log_features else ""),
                reference_arrays.continuous[feature],
                window_arrays.continuous[feature],
                caption(family, feature),
            )
            for feature in features
            if feature in reference_arrays.continuous and feature in window_arrays.continuous
        ]
        if panels:
            images.append((f"{family} features", plot_histograms(panels, family)))
    if reference_arrays.embedding is not None and window_arrays.embedding is not None:
        panels = [
            (
                column,
                reference_arrays.embedding[:, index],
                window_arrays.embedding[:, index],
                "marginal",
            )
            for index, column in enumerate(config.embedding_columns)
        ]
        title = f"embedding ({caption('embedding', EMBEDDING_FEATURE)})"
        images.append(("Embedding marginals", plot_histograms(panels, title)))

    document = load_template().render(
        report=report, config=config, estimate=report.estimate, images=images
    )
    target = resolve_target(path, HTML_REPORT_NAME)
    target.write_text(document, encoding="utf-8")
    return target

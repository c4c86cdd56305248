"""Validation harness of the drift monitor: planted drifts must be found, no drift must stay quiet.

Two sources of test data live here, out of the monitor itself:

- :func:`simulate_records`: synthetic inference records with calibrated probabilities and
  planted shifts, for unit tests and the benchmark (no model needed);
- :func:`run_validation`: the real model on generated images. Images are generated
  (``eye_model.synthetic``), altered the way real inputs drift (exposure, blur,
  compression, colour cast, case mix, images that are no fundus at all), scored by the
  real model through the same code as the scoring server, and turned into inference
  records exactly as the serving telemetry writes them. Each trial draws a window from
  such records and runs :func:`eye_model.drift.compute_drift` against a reference
  profile scored the same way from held-out, unaltered images.

``scripts/validate_drift.py`` runs the full version; the tests run a smaller one.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter
from scipy.stats import chi2

from eye_model.config import CLASS_NAMES, PROB_COLUMNS
from eye_model.drift.compute import compute_drift
from eye_model.drift.config import DriftConfig
from eye_model.drift.report import DriftReport

_N_CLASSES = len(CLASS_NAMES)

#: Alteration of one image: (image, random generator) → altered image, or the file a camera
#: would send (bytes), when the alteration is in the encoding itself.
Alteration = Callable[[Image.Image, np.random.Generator], "Image.Image | bytes"]


def _brightness(factor: float) -> Alteration:
    return lambda image, rng: ImageEnhance.Brightness(image).enhance(factor)


def _blur(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    return image.filter(ImageFilter.GaussianBlur(radius=image.width * 0.012))


def _jpeg_30(image: Image.Image, rng: np.random.Generator) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=30)
    return buffer.getvalue()


def _colour_cast(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    # A cold, bluish cast as from a mis-set white balance.
    pixels = np.asarray(image, np.float32) * np.array([0.82, 0.97, 1.35], np.float32)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def draw_non_fundus(size: int, rng: np.random.Generator) -> Image.Image:
    """An out-of-domain picture: a document-like page, a gradient, or shapes on a grey desk."""
    kind = int(rng.integers(3))
    if kind == 0:
        image = Image.new("RGB", (size, size), (245, 245, 240))
        draw = ImageDraw.Draw(image)
        for row in range(int(size * 0.08), size - 10, max(6, size // 24)):
            draw.line(
                (size * 0.1, row, size * rng.uniform(0.5, 0.9), row), fill=(30, 30, 30), width=2
            )
        return image
    if kind == 1:
        ramp = np.linspace(0, 1, size, dtype=np.float32)
        colours = rng.uniform(0, 255, (2, 3)).astype(np.float32)
        pixels = ramp[None, :, None] * colours[0] + (1 - ramp[:, None, None]) * colours[1]
        return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    image = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(90, 160, 3)))
    draw = ImageDraw.Draw(image)
    for _ in range(6):
        x, y = rng.integers(0, size, 2)
        r = int(rng.integers(size // 12, size // 4))
        draw.rectangle(
            (x - r, y - r, x + r, y + r), fill=tuple(int(v) for v in rng.integers(0, 255, 3))
        )
    return image


@dataclass(frozen=True)
class Scenario:
    """A planted drift and the test families expected to find it."""

    name: str
    families: tuple[str, ...]
    alteration: Alteration | None = None
    class_shares: tuple[float, ...] | None = None
    out_of_domain_share: float = 0.0


#: The planted drifts of the issue.
SCENARIOS: tuple[Scenario, ...] = (
    Scenario("brightness_x0.7", ("image", "embedding"), _brightness(0.7)),
    Scenario("brightness_x1.3", ("image", "embedding"), _brightness(1.3)),
    Scenario("gaussian_blur", ("image", "embedding", "output"), _blur),
    Scenario("jpeg_quality_30", ("image", "embedding"), _jpeg_30),
    Scenario("colour_cast", ("image", "embedding"), _colour_cast),
    Scenario(
        "class_prior_normal_60", ("prediction", "output"), class_shares=(0.4 / 3,) * 3 + (0.6,)
    ),
    Scenario("out_of_domain_20pct", ("image", "embedding", "output"), out_of_domain_share=0.2),
)


def load_classifier(model_path: str | Path) -> object:
    """Load the model's ``EyeDiseaseClassifier`` (the object the scoring server calls).

    Its fundus check only warns: the harness plants out-of-domain pictures to see the drift
    tests find them, and a served model (``refuse``) would keep them from the tests.
    """
    import mlflow

    classifier = mlflow.pyfunc.load_model(str(model_path)).unwrap_python_model()
    classifier.fundus_check = "warn"
    return classifier


def score_images(
    model: object, images: Sequence[Image.Image | bytes], labels: Sequence[str], seed: int = 0
) -> pd.DataFrame:
    """Score images with the classifier and return serving-format inference records (+ ``label``).

    Pictures are saved as JPEG with the camera qualities of the synthetic training set
    (files, bytes, are sent as they are), then go through
    ``EyeDiseaseClassifier.score_images``; the records through
    ``eye_model.telemetry.build_records``: what the serving side logs.
    """
    from eye_model.synthetic import JPEG_QUALITY_RANGE
    from eye_model.telemetry import ModelIdentity, build_records

    rng = np.random.default_rng(seed)
    encoded = []
    for image in images:
        if isinstance(image, bytes):
            encoded.append(image)
            continue
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=int(rng.integers(*JPEG_QUALITY_RANGE, endpoint=True)))
        encoded.append(buffer.getvalue())
    rows = model.score_images(encoded, with_stats=True)  # type: ignore[attr-defined]
    records = pd.DataFrame(build_records(rows, request_id="validation", identity=ModelIdentity()))
    records["label"] = labels
    records["timestamp"] = np.arange(len(records), dtype=float)
    return records


def render_pool(per_class: int, image_size: int, seed: int) -> tuple[list[Image.Image], list[str]]:
    """Generate ``per_class`` unaltered fundus images of each class."""
    from eye_model.synthetic import make_image_rng, render_fundus

    images, labels = [], []
    for k, label in enumerate(CLASS_NAMES):
        for i in range(per_class):
            images.append(render_fundus(label, make_image_rng(seed, k, i), image_size))
            labels.append(label)
    return images, labels


@dataclass
class ValidationResult:
    """Detection rates of planted drifts and false-alarm rates of no-drift windows."""

    detection: dict[str, float]
    detection_any_family: dict[str, float]
    false_alarms: dict[int, float]
    trials: int
    window: int

    def passed(self, detection_goal: float = 0.9, false_alarm_goal: float = 0.02) -> bool:
        """Whether every scenario meets the detection goal and every size the false-alarm goal."""
        return all(v >= detection_goal for v in self.detection.values()) and all(
            v <= false_alarm_goal for v in self.false_alarms.values()
        )


def _flagged_families(report: DriftReport) -> set[str]:
    return {f.family for f in report.flagged_features}


def run_validation(
    model_path: str | Path,
    *,
    image_size: int = 256,
    reference_per_class: int = 250,
    pool_per_class: int = 300,
    window: int = 500,
    trials: int = 20,
    no_drift_sizes: tuple[int, ...] = (200, 1000),
    no_drift_trials: int = 50,
    seed: int = 1234,
    config: DriftConfig | None = None,
    scenarios: tuple[Scenario, ...] = SCENARIOS,
) -> ValidationResult:
    """Run the harness.

    Args:
        model_path: the model folder (or URI) whose drift monitor is validated.
        image_size: side of generated images (as the training set was generated).
        reference_per_class: held-out images per class for the reference profile.
        pool_per_class: images per class of the window pool (altered per scenario).
        window: records per planted-drift window.
        trials: windows per scenario.
        no_drift_sizes: window sizes of the no-drift check (at most the pool size).
        no_drift_trials: windows per no-drift size.
        seed: seed of generation and sampling.
        config: drift test settings.
        scenarios: planted drifts to check.

    Returns:
        Detection rates (by the expected families, and by any family) and false-alarm rates.
    """
    config = config or DriftConfig()
    rng = np.random.default_rng(seed)
    model = load_classifier(model_path)
    ref_images, ref_labels = render_pool(reference_per_class, image_size, seed)
    reference = score_images(model, ref_images, ref_labels)
    pool_images, pool_labels = render_pool(pool_per_class, image_size, seed + 1)
    labels = np.asarray(pool_labels)
    clean = score_images(model, pool_images, pool_labels)
    n_odd_pool = max(50, window // 2)
    odd_pool = score_images(
        model,
        [draw_non_fundus(image_size, rng) for _ in range(n_odd_pool)],
        ["unknown"] * n_odd_pool,
    )

    false_alarms = {}
    for size in no_drift_sizes:
        alarms = 0
        for _ in range(no_drift_trials):
            sample = clean.iloc[rng.choice(len(clean), size, replace=size > len(clean))]
            alarms += compute_drift(
                reference, sample.drop(columns=["label"]), config
            ).drift_test_detected
        false_alarms[size] = alarms / no_drift_trials

    detection, detection_any = {}, {}
    for scenario in scenarios:
        if scenario.alteration is not None:
            altered = [scenario.alteration(im, rng) for im in pool_images]
            records = score_images(model, altered, pool_labels)
        else:
            records = clean
        hits = hits_any = 0
        for _ in range(trials):
            if scenario.class_shares is not None:
                counts = rng.multinomial(window, scenario.class_shares)
                index = np.concatenate(
                    [
                        rng.choice(np.flatnonzero(labels == name), n, replace=True)
                        for name, n in zip(CLASS_NAMES, counts, strict=True)
                    ]
                )
                sample = records.iloc[index]
            else:
                sample = records.iloc[
                    rng.choice(len(records), window, replace=window > len(records))
                ]
            if scenario.out_of_domain_share:
                n_odd = int(round(window * scenario.out_of_domain_share))
                odd = odd_pool.iloc[rng.choice(len(odd_pool), n_odd, replace=n_odd > len(odd_pool))]
                sample = pd.concat([sample.iloc[: window - n_odd], odd], ignore_index=True)
            window_records = sample.drop(columns=["label"])  # detection needs no labels
            families = _flagged_families(compute_drift(reference, window_records, config))
            hits += bool(families & set(scenario.families))
            hits_any += bool(families)
        detection[scenario.name] = hits / trials
        detection_any[scenario.name] = hits_any / trials
    return ValidationResult(detection, detection_any, false_alarms, trials, window)


def simulate_records(
    n_records: int,
    *,
    seed: int = 0,
    class_prior: Sequence[float] | None = None,
    brightness_scale: float = 1.0,
    sharpness_scale: float = 1.0,
    rgb_scale: tuple[float, float, float] = (1.0, 1.0, 1.0),
    embedding_shift: float = 0.0,
    error_rate: float = 0.0,
    as_reference: bool = False,
    with_labels: bool = False,
    start_time: float = 1_700_000_000.0,
) -> pd.DataFrame:
    """Synthetic records in the record schema, with calibrated probabilities.

    Each row has a latent class (drawn from ``class_prior``) that drives the
    logits, image statistics and embedding; labels (``with_labels``) are drawn
    from the probabilities, so the probabilities are calibrated by construction.

    Args:
        n_records: rows to generate.
        seed: random seed.
        class_prior: latent class shares in ``CLASS_NAMES`` order (uniform when None).
        brightness_scale: multiplies brightness and the RGB means (planted drift).
        sharpness_scale: multiplies the sharpness (below 1 mimics blur).
        rgb_scale: multiplies each RGB mean (colour cast).
        embedding_shift: added to every embedding coordinate (in embedding sd).
        error_rate: share of rows with status ``error`` (no prediction), records only.
        as_reference: reference profile layout (no request/timing/status columns).
        with_labels: add a ``label`` column drawn from the probabilities.
        start_time: timestamp of the first record (epoch s).

    Returns:
        The DataFrame.
    """
    rng = np.random.default_rng(seed)
    prior = (
        np.full(_N_CLASSES, 1.0 / _N_CLASSES)
        if class_prior is None
        else np.asarray(class_prior, dtype=np.float64)
    )
    prior = prior / prior.sum()
    latent = rng.choice(_N_CLASSES, size=n_records, p=prior)
    logits = rng.normal(0.0, 1.0, size=(n_records, _N_CLASSES))
    logits[np.arange(n_records), latent] += 3.5
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    predicted = probs.argmax(axis=1)
    class_names = np.asarray(CLASS_NAMES, dtype=object)

    brightness_mean = np.array([110.0, 85.0, 90.0, 95.0])[latent]
    brightness = np.clip(rng.normal(brightness_mean, 15.0) * brightness_scale, 0.0, 255.0)
    contrast = np.clip(rng.normal(np.array([35.0, 48.0, 45.0, 44.0])[latent], 8.0), 0.0, None)
    sharpness = np.exp(rng.normal(np.array([3.5, 5.0, 4.6, 4.8])[latent], 0.6)) * sharpness_scale
    colour = np.array([1.55, 0.85, 0.35]) * np.asarray(rgb_scale, dtype=np.float64)
    frame: dict[str, Any] = {
        "predicted_class": class_names[predicted],
        "confidence": probs.max(axis=1),
    }
    for index, column in enumerate(PROB_COLUMNS):
        frame[column] = probs[:, index]
    frame["img_brightness"] = brightness
    frame["img_contrast"] = contrast
    frame["img_sharpness"] = sharpness
    for index, column in enumerate(("img_mean_r", "img_mean_g", "img_mean_b")):
        frame[column] = np.clip(
            brightness * colour[index] + rng.normal(0.0, 5.0, n_records), 0, 255
        )
    sizes = np.array([512, 1024, 2048])
    frame["img_width"] = sizes[rng.integers(0, sizes.size, n_records)]
    frame["img_height"] = frame["img_width"]
    centres = np.random.default_rng(12345).normal(0.0, 1.0, size=(_N_CLASSES, 8))
    embedding = centres[latent] + rng.normal(0.0, 1.0, size=(n_records, 8)) + embedding_shift
    for index in range(8):
        frame[f"emb_{index}"] = embedding[:, index]
    # ood_score in the serving side's spirit: the squared distance to the class centre,
    # 0 at the median and 1 at the 99th percentile of the undrifted (chi-square) distribution.
    median, q99 = chi2.ppf([0.5, 0.99], df=8)
    distance = ((embedding - centres[latent]) ** 2).sum(axis=1)
    frame["ood_score"] = (distance - median) / (q99 - median)
    if with_labels:
        cumulative = np.cumsum(probs, axis=1)[:, :-1]
        frame["label"] = class_names[(rng.random(n_records)[:, None] > cumulative).sum(axis=1)]
    records = pd.DataFrame(frame)
    if as_reference:
        return records
    records.insert(0, "request_id", pd.RangeIndex(n_records).astype(str))
    records.insert(1, "timestamp", start_time + np.cumsum(rng.exponential(1.0, n_records)))
    records.insert(2, "inference_ms", rng.lognormal(math.log(120.0), 0.3, n_records))
    failed = rng.random(n_records) < error_rate
    records.insert(3, "status", np.where(failed, "error", "ok").astype(object))
    records["model_name"] = "eye-disease-model"
    records["model_version"] = "1"
    if failed.any():
        records.loc[failed, "predicted_class"] = None
        records.loc[failed, ["confidence", *PROB_COLUMNS]] = np.nan
    return records

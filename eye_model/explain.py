"""Explanations of predictions: where the network looked for the class it chose.

The pyfunc takes two MLflow predict params (:data:`PARAMS_SCHEMA`): ``explain`` (bool,
default false) and ``heatmap_size`` (int; 0, the default, is the model's input size). With
``explain=true`` each scored row gains ``heatmap``: a base64 PNG of the photo as the network
saw it with the map of the predicted class over it; a row with an error gets a null
heatmap. Without it the output has no ``heatmap`` column.

The map is HiResCAM (Draelos and Carin, 2020): the gradient of the predicted class's logit
times the feature maps, cell by cell, summed over the channels; its positive part. Grad-CAM
(Selvaraju et al., 2017) first averages the gradients over space, which blurs where the
evidence lies and needs the coarse last convolutional block (16 px cells); HiResCAM keeps it
cell by cell, so it can read a finer block and still show what the class's logit depends
on. The small CNN is explained at :data:`~eye_model.network.EXPLAIN_LAYER` (8 px cells), a
``keras.applications`` backbone at its last block. It runs as one ``tf.function`` per model
(built on the first explained request, then reused), on a batch of images at once.

Heatmaps go to the caller only: telemetry records the scored rows, which never hold them.
"""

from __future__ import annotations

import base64
import threading
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.types.schema import ParamSchema, ParamSpec

from eye_model.preprocess import ImageError, decode_image

#: The output column added by ``explain=true``.
HEATMAP_COLUMN = "heatmap"
#: The predict params the pyfunc accepts (part of its signature).
PARAMS_SCHEMA = ParamSchema(
    [
        ParamSpec("explain", "boolean", False),
        ParamSpec("heatmap_size", "integer", 0),
    ]
)
#: Smallest and largest ``heatmap_size`` accepted, in pixels.
HEATMAP_SIZE_RANGE = (16, 1024)
#: Weight of the heatmap over the photo where the map is strongest (it fades where it is 0).
OVERLAY_ALPHA = 0.6
#: Images explained per network call.
EXPLAIN_BATCH = 32
#: zlib level of the heatmap PNGs: 1 is about 2.5 x faster than 3 at 224 px, 7 % larger.
PNG_COMPRESSION = 1

# A "jet"-like colour scale: dark blue (0) - blue - cyan - yellow - red (1).
_STOPS = np.array([0.0, 0.25, 0.5, 0.75, 1.0])
_COLOURS = np.array(
    [[0, 0, 128], [0, 64, 255], [0, 224, 255], [255, 224, 0], [220, 0, 0]], dtype=np.float32
)


def explain_options(params: dict[str, Any] | None, image_size: int) -> int | None:
    """The heatmap side asked for by ``params``, or None when no explanation is asked.

    Raises:
        MlflowException: INVALID_PARAMETER_VALUE for a ``heatmap_size`` out of range.
    """
    params = params or {}
    explain = params.get("explain", False)
    if isinstance(explain, str):  # a model served without the params schema passes text
        explain = explain.strip().lower() in {"true", "1", "yes"}
    if not explain:
        return None
    size = int(params.get("heatmap_size") or 0) or image_size
    low, high = HEATMAP_SIZE_RANGE
    if not low <= size <= high:
        raise MlflowException(
            f"heatmap_size={size} is out of range; use {low} to {high} pixels "
            "(or 0 for the model's input size)",
            error_code=INVALID_PARAMETER_VALUE,
        )
    return size


def explain_layer(network: Any) -> Any:
    """The layer whose feature maps explanations read: the small CNN's
    :data:`~eye_model.network.EXPLAIN_LAYER`, else the last convolutional block."""
    from eye_model.network import EXPLAIN_LAYER

    names = {layer.name for layer in network.layers}
    return network.get_layer(EXPLAIN_LAYER) if EXPLAIN_LAYER in names else last_conv_layer(network)


def last_conv_layer(network: Any) -> Any:
    """The network's last layer with a spatial (4-D) output: its last convolutional block.

    For the small CNN it is the last block's activation (before pooling); for a
    ``keras.applications`` backbone nested as one layer, the backbone itself (its output is
    the feature map of its last block).
    """
    for layer in reversed(network.layers[1:]):
        shape = getattr(layer, "output", None)
        if shape is not None and len(shape.shape) == 4:
            return layer
    raise ValueError(f"network {network.name} has no convolutional layer to explain")


class ClassMap:
    """HiResCAM of a Keras network, compiled once: uint8 images and classes in.

    :meth:`maps` gives the maps; :meth:`heatmaps` the PNG files of the photos with their
    maps over them, colourised, blended and encoded by TensorFlow in the same batch.
    """

    def __init__(self, network: Any, image_size: int) -> None:
        import keras
        import tensorflow as tf

        layer = explain_layer(network)
        both = keras.Model(network.inputs, [layer.output, network.output])
        images_spec = tf.TensorSpec([None, image_size, image_size, 3], tf.uint8)
        classes_spec = tf.TensorSpec([None], tf.int32)
        lut = tf.constant(colourise(np.linspace(0.0, 1.0, 256)), tf.float32)

        size_spec = tf.TensorSpec([], tf.int32)

        @tf.function(input_signature=[images_spec, classes_spec, size_spec])
        def cams(images: tf.Tensor, classes: tf.Tensor, size: tf.Tensor) -> tf.Tensor:
            """The maps (n, size, size, 1), resized, then 0-1 with 1 at each map's peak."""
            with tf.GradientTape() as tape:
                features, logits = both(tf.cast(images, tf.float32), training=False)
                tape.watch(features)
                score = tf.gather(logits, classes, batch_dims=1)
            grads = tape.gradient(score, features)
            cam = tf.nn.relu(tf.reduce_sum(grads * features, axis=-1))
            cam = tf.nn.relu(tf.image.resize(cam[..., None], tf.stack([size, size])))
            peak = tf.reduce_max(cam, axis=(1, 2, 3), keepdims=True)
            return tf.clip_by_value(tf.math.divide_no_nan(cam, peak), 0.0, 1.0)

        @tf.function(input_signature=[images_spec, classes_spec, size_spec])
        def pngs(images: tf.Tensor, classes: tf.Tensor, size: tf.Tensor) -> tf.Tensor:
            photo = tf.image.resize(tf.cast(images, tf.float32), tf.stack([size, size]))
            cam = cams(images, classes, size)
            colour = tf.gather(lut, tf.cast(tf.round(cam[..., 0] * 255.0), tf.int32))
            alpha = OVERLAY_ALPHA * cam
            blended = tf.clip_by_value(tf.round(photo * (1.0 - alpha) + colour * alpha), 0, 255)
            return tf.map_fn(
                lambda image: tf.io.encode_png(image, compression=PNG_COMPRESSION),
                tf.cast(blended, tf.uint8),
                fn_output_signature=tf.string,
            )

        self._cams = cams
        self._pngs = pngs
        self._tf = tf
        self.image_size = image_size

    def _batches(self, pixels: np.ndarray, classes: Sequence[int]) -> Iterator[tuple[Any, Any]]:
        tf = self._tf
        for start in range(0, len(pixels), EXPLAIN_BATCH):
            chunk = np.ascontiguousarray(pixels[start : start + EXPLAIN_BATCH])
            wanted = np.asarray(classes[start : start + EXPLAIN_BATCH], np.int32)
            yield tf.constant(chunk), tf.constant(wanted)

    def maps(self, pixels: np.ndarray, classes: Sequence[int]) -> np.ndarray:
        """HiResCAM maps (n, image_size, image_size), 0-1 (1 at each map's peak).

        Args:
            pixels: uint8 images (n, image_size, image_size, 3), as the network takes them.
            classes: the class index to explain for each image.
        """
        size = self._tf.constant(self.image_size, self._tf.int32)
        out = [
            self._cams(images, wanted, size).numpy()[..., 0]
            for images, wanted in self._batches(pixels, classes)
        ]
        if not out:
            return np.zeros((0, self.image_size, self.image_size), np.float32)
        return np.concatenate(out)

    def heatmaps(self, pixels: np.ndarray, classes: Sequence[int], size: int) -> list[bytes]:
        """PNG files, ``size`` pixels square, of each photo with its map over it."""
        out: list[bytes] = []
        for images, wanted in self._batches(pixels, classes):
            out.extend(self._pngs(images, wanted, self._tf.constant(size, self._tf.int32)).numpy())
        return out


_CLASS_MAPS: weakref.WeakKeyDictionary[Any, ClassMap] = weakref.WeakKeyDictionary()
_CLASS_MAPS_LOCK = threading.Lock()


def class_map_of(runner: Any) -> ClassMap:
    """The :class:`ClassMap` of a model's network runner, built on first use."""
    with _CLASS_MAPS_LOCK:
        cam = _CLASS_MAPS.get(runner)
        if cam is None:
            cam = ClassMap(runner.network, runner.image_size)
            _CLASS_MAPS[runner] = cam
        return cam


#: Share of a map's mass that must lie on the sign, and share of images that must reach it.
SIGN_MIN_MASS, SIGN_MIN_SHARE = 0.5, 0.8


@dataclass
class SignCoverage:
    """How well the maps of one disease class lie on its signs, on generated photographs."""

    on_sign: float  # share of the images classified right with >= SIGN_MIN_MASS on the sign
    on_sign_all: float  # the same over all the class's images, each explained for its class
    median_mass: float  # median share of the map's mass on the sign (all images)
    median_area: float  # median share of the picture the sign covers
    enrichment: float  # median of (mass share on the sign / its area share)
    recall: float  # share of the images the model classifies right
    right: int  # how many that is


def sign_coverage(runner: Any, per_class: int, seed: int = 99) -> dict[str, SignCoverage]:
    """Explain generated photographs whose signs the generator placed; measure the overlap.

    For each disease class, ``per_class`` photographs at the model's input size are scored and
    explained for their class; each map's mass on :meth:`FundusParams.sign_mask` is compared
    with the bar (at least half the mass on the sign in at least 80 % of images).
    """
    from eye_model.config import CLASS_NAMES
    from eye_model.synthetic import draw_fundus, make_image_rng, sample_fundus_params

    cam = class_map_of(runner)
    out = {}
    for label in ("cataract", "diabetic_retinopathy", "glaucoma"):
        index = CLASS_NAMES.index(label)
        params = [
            sample_fundus_params(label, make_image_rng(seed, index, i), runner.image_size)
            for i in range(per_class)
        ]
        pixels = np.stack([np.asarray(draw_fundus(p).convert("RGB")) for p in params])
        right = runner.run(pixels)[0].argmax(axis=1) == index
        maps = cam.maps(pixels, [index] * per_class)
        masks = [p.sign_mask() for p in params]
        masses = np.array(
            [(m * k).sum() / max(m.sum(), 1e-9) for m, k in zip(maps, masks, strict=True)]
        )
        areas = np.array([k.mean() for k in masks])
        out[label] = SignCoverage(
            on_sign=float((masses[right] >= SIGN_MIN_MASS).mean()) if right.any() else 0.0,
            on_sign_all=float((masses >= SIGN_MIN_MASS).mean()),
            median_mass=float(np.median(masses)),
            median_area=float(np.median(areas)),
            enrichment=float(np.median(masses / areas)),
            recall=float(right.mean()),
            right=int(right.sum()),
        )
    return out


def colourise(cam: np.ndarray) -> np.ndarray:
    """A 0-1 map as RGB uint8 on the jet-like colour scale."""
    flat = np.clip(cam, 0.0, 1.0).ravel()
    rgb = np.stack([np.interp(flat, _STOPS, _COLOURS[:, c]) for c in range(3)], axis=-1)
    return rgb.reshape(*cam.shape, 3).astype(np.uint8)


def _pixels(model: Any, row: Any, value: object) -> np.ndarray:
    """The pixels the network saw for ``row``: kept ones, else the image decoded again."""
    if row.image is not None and row.image.pixels is not None:
        return np.asarray(row.image.pixels)
    image = decode_image(
        value, model.config.image_size, max_pixels=model.max_pixels, max_bytes=model.max_bytes
    )
    return image.require_pixels()


def heatmaps(model: Any, rows: Sequence[Any], values: Sequence[object], size: int) -> list[Any]:
    """The ``heatmap`` of each row (base64 PNG), None for a row that was not scored."""
    scored = [i for i, row in enumerate(rows) if row.output_error is None]
    result: list[str | None] = [None] * len(rows)
    pixels: list[np.ndarray] = []
    kept: list[int] = []
    for i in scored:
        try:
            pixels.append(_pixels(model, rows[i], values[i]))
            kept.append(i)
        except (ImageError, ValueError):
            continue  # decoded once already; a second failure leaves this heatmap null
    if not kept:
        return result
    classes = [int(np.argmax(rows[i].probabilities)) for i in kept]
    files = class_map_of(model.runner).heatmaps(np.stack(pixels), classes, size)
    for i, png in zip(kept, files, strict=True):
        result[i] = base64.b64encode(png).decode("ascii")
    return result


def add_heatmaps(
    model: Any,
    frame: pd.DataFrame,
    rows: Sequence[Any],
    output: pd.DataFrame | list[dict[str, Any]],
    size: int,
) -> pd.DataFrame | list[dict[str, Any]]:
    """Add the ``heatmap`` column to the output (``explain=true``), then drop the pixels kept.

    Args:
        model: the loaded :class:`~eye_model.pyfunc.EyeDiseaseClassifier`.
        frame: the request's input (its ``image`` column).
        rows: the scored rows, in input order; their pixels were kept for this.
        output: the output DataFrame, or the records the scoring server writes.
        size: the heatmap side in pixels (:func:`explain_options`).
    """
    values = frame["image"].tolist()
    maps = heatmaps(model, rows, values, size)
    if not model._keeps_pixels():  # telemetry keeps them for its statistics, nothing else
        for row in rows:
            row.keep_pixels = False
            if row.image is not None:
                row.image.pixels = None
    if isinstance(output, pd.DataFrame):
        output[HEATMAP_COLUMN] = pd.Series(maps, dtype=object, index=output.index)
        return output
    for record, heatmap in zip(output, maps, strict=True):
        record[HEATMAP_COLUMN] = heatmap
    return output

"""Grad-CAM explanations in process: the params, the heatmap column, the maps themselves."""

from __future__ import annotations

import base64
import copy
import io
import shutil
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow.exceptions import MlflowException
from PIL import Image

from eye_model.explain import OVERLAY_ALPHA, ClassMap, colourise, explain_layer, last_conv_layer
from eye_model.preprocess import decode_image
from eye_model.scored import OUTPUT_COLUMNS
from tests.conftest import TINY_IMAGE_SIZE
from tests.helpers import b64, draw_fundus_like, encode


@pytest.fixture(scope="module")
def model(tiny_model_path: Path) -> mlflow.pyfunc.PyFuncModel:
    return mlflow.pyfunc.load_model(str(tiny_model_path))


def _images(n: int) -> list[str]:
    return [b64(encode(draw_fundus_like(120, seed=i), "JPEG")) for i in range(n)]


def _png(text: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(text)))
    assert image.format == "PNG"
    return image


def test_explain_adds_a_png_heatmap_per_scored_row_and_null_for_a_bad_row(
    model: mlflow.pyfunc.PyFuncModel,
) -> None:
    frame = pd.DataFrame({"image": [*_images(3), "%%%"], "image_id": list("abcd")})
    plain = model.predict(frame)
    out = model.predict(frame, params={"explain": True})
    assert list(out.columns) == ["image_id", *OUTPUT_COLUMNS, "heatmap"]
    pd.testing.assert_frame_equal(out.drop(columns="heatmap"), plain)
    heatmaps = out["heatmap"].tolist()
    assert heatmaps[3] is None and out["error"][3] is not None
    for text in heatmaps[:3]:
        image = _png(text)
        assert image.size == (TINY_IMAGE_SIZE, TINY_IMAGE_SIZE)
        assert image.mode == "RGB"
    sized = model.predict(frame, params={"explain": True, "heatmap_size": 200})
    assert _png(sized["heatmap"][0]).size == (200, 200)


def test_without_explain_the_output_has_no_heatmap_column(
    model: mlflow.pyfunc.PyFuncModel,
) -> None:
    frame = pd.DataFrame({"image": _images(2)})
    assert list(model.predict(frame).columns) == list(OUTPUT_COLUMNS)
    off = model.predict(frame, params={"explain": False, "heatmap_size": 100})
    assert list(off.columns) == list(OUTPUT_COLUMNS)


def test_a_heatmap_size_out_of_range_names_the_param_and_the_range(
    model: mlflow.pyfunc.PyFuncModel,
) -> None:
    frame = pd.DataFrame({"image": _images(1)})
    with pytest.raises(MlflowException, match=r"heatmap_size=5000 is out of range; use 16 to 1024"):
        model.predict(frame, params={"explain": True, "heatmap_size": 5000})


def test_served_records_carry_the_heatmap_of_the_frame(model: mlflow.pyfunc.PyFuncModel) -> None:
    served = copy.copy(model.unwrap_python_model())
    served._serving = True
    served._telemetry = None
    frame = pd.DataFrame({"image": [*_images(2), "%%%"]})
    records = served.predict(None, frame, params={"explain": True, "heatmap_size": 0})
    expected = model.predict(frame, params={"explain": True})["heatmap"].tolist()
    assert [record["heatmap"] for record in records] == expected
    assert "heatmap" not in served.predict(None, frame, params=None)[0]


def test_hirescam_equals_an_eager_hirescam_of_the_explained_layer(tiny_network) -> None:
    import keras
    import tensorflow as tf

    assert last_conv_layer(tiny_network).name == "b4a_relu"
    layer = explain_layer(tiny_network)
    assert layer.name == "b3b_relu"  # an eighth of the input resolution
    pixels = np.stack([decode_image(v, TINY_IMAGE_SIZE).require_pixels() for v in _images(3)])
    classes = [0, 2, 3]
    maps = ClassMap(tiny_network, TINY_IMAGE_SIZE).maps(pixels, classes)
    assert maps.shape == (3, TINY_IMAGE_SIZE, TINY_IMAGE_SIZE)
    both = keras.Model(tiny_network.inputs, [layer.output, tiny_network.output])
    for i, wanted in enumerate(classes):
        with tf.GradientTape() as tape:
            features, logits = both(pixels[i : i + 1].astype(np.float32), training=False)
            score = logits[0, wanted]
        grads = tape.gradient(score, features).numpy()[0]
        assert features.shape[1] == TINY_IMAGE_SIZE // 8
        # HiResCAM: each cell's features weighted by the gradient at that cell, not its mean.
        cam = np.maximum((grads * features.numpy()[0]).sum(axis=-1), 0)
        up = tf.image.resize(cam[None, ..., None], [TINY_IMAGE_SIZE] * 2).numpy()[0, ..., 0]
        up = up / up.max() if up.max() > 0 else up  # 1 at the peak of the map shown
        np.testing.assert_allclose(maps[i], up, atol=1e-4)
    assert maps.max() <= 1.0 + 1e-6 and maps.min() >= 0.0


def test_the_heatmap_png_is_the_photo_blended_with_the_coloured_map(tiny_network) -> None:
    pixels = np.stack([decode_image(v, TINY_IMAGE_SIZE).require_pixels() for v in _images(2)])
    cam = ClassMap(tiny_network, TINY_IMAGE_SIZE)
    maps = cam.maps(pixels, [1, 2])
    files = cam.heatmaps(pixels, [1, 2], TINY_IMAGE_SIZE)
    assert [f[:8] for f in files] == [b"\x89PNG\r\n\x1a\n"] * 2
    for photo, cam_map, png in zip(pixels, maps, files, strict=True):
        got = np.asarray(Image.open(io.BytesIO(png)), np.float32)
        alpha = (OVERLAY_ALPHA * cam_map)[..., None]
        colour = colourise(np.round(cam_map * 255) / 255).astype(np.float32)
        expected = photo * (1 - alpha) + colour * alpha
        assert np.abs(got - expected).max() <= 2.0
        assert cam_map.min() < 0.9 and cam_map.max() == pytest.approx(1.0, abs=0.05)
    assert tuple(colourise(np.ones((1, 1)))[0, 0]) == (220, 0, 0)


def test_a_model_logged_without_params_keeps_working(tiny_model_path: Path, tmp_path: Path) -> None:
    old = tmp_path / "old-model"
    shutil.copytree(tiny_model_path, old)
    mlmodel = old / "MLmodel"
    meta = yaml.safe_load(mlmodel.read_text())
    meta["signature"].pop("params")
    mlmodel.write_text(yaml.safe_dump(meta))
    loaded = mlflow.pyfunc.load_model(str(old))
    assert loaded.metadata.signature.params is None
    frame = pd.DataFrame({"image": _images(2)})
    assert list(loaded.predict(frame).columns) == list(OUTPUT_COLUMNS)
    # MLflow drops params a model does not declare (with a warning): no heatmap, no failure.
    ignored = loaded.predict(frame, params={"explain": True})
    assert list(ignored.columns) == list(OUTPUT_COLUMNS)
    assert ignored["error"].isna().all()


def test_explaining_reuses_the_decoded_pixels_and_then_drops_them(
    model: mlflow.pyfunc.PyFuncModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    import eye_model.explain

    def no_second_decode(*args: object, **kwargs: object) -> None:
        raise AssertionError("the image was decoded a second time for its heatmap")

    monkeypatch.setattr(eye_model.explain, "decode_image", no_second_decode)
    inner = model.unwrap_python_model()
    frame = pd.DataFrame({"image": [*_images(3), "%%%"]})
    kept: list[object] = []
    original = eye_model.explain.heatmaps

    def watch(model_: object, rows: list, values: list, size: int) -> list:
        out = original(model_, rows, values, size)
        kept.extend(rows)
        return out

    monkeypatch.setattr(eye_model.explain, "heatmaps", watch)
    out = inner.predict(None, frame, params={"explain": True})
    assert out["heatmap"].notna().tolist() == [True, True, True, False]
    # Without telemetry nothing of the images outlives the request.
    assert all(row.image is None or row.image.pixels is None for row in kept)
    assert all(not row.keep_pixels for row in kept)

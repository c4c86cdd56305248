"""The network's runtime: TensorFlow Lite where it agrees with TensorFlow, else TensorFlow.

The networks are real and compiled for real; the one stand-in is a converter that fails
(eye-model's own networks all convert, so that fault cannot be produced otherwise).
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest

from eye_model import inference
from eye_model.inference import ModelConfig, NetworkRunner, shared_runner
from eye_model.network import build_embedding_model
from eye_model.ood import fit_ood_statistics
from tests.conftest import TINY_IMAGE_SIZE
from tests.helpers import b64, draw_fundus_like, encode

CLASSES = 4


@pytest.fixture(scope="module")
def full_config(tiny_network) -> ModelConfig:
    """A config with every output the served graph has: a projection and the OOD score."""
    rng = np.random.default_rng(7)
    pixels = rng.integers(0, 256, (48, TINY_IMAGE_SIZE, TINY_IMAGE_SIZE, 3), dtype=np.uint8)
    logits, embedding = (
        np.asarray(x)
        for x in build_embedding_model(tiny_network)(pixels.astype(np.float32), training=False)
    )
    stats = fit_ood_statistics(
        embedding[:32], np.arange(32) % CLASSES, logits[32:], embedding[32:], CLASSES
    )
    width = embedding.shape[1]
    return ModelConfig(
        TINY_IMAGE_SIZE,
        temperature=1.7,
        embedding_mean=embedding.mean(axis=0).tolist(),
        embedding_projection=rng.normal(size=(width, 8)).tolist(),
        ood=stats.to_dict(),
    )


def _pixels(count: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (count, TINY_IMAGE_SIZE, TINY_IMAGE_SIZE, 3), dtype=np.uint8)


def _assert_same(got: tuple, want: tuple) -> None:
    probabilities, embedding, ood = got
    np.testing.assert_allclose(probabilities, want[0], atol=1e-5)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-9)
    np.testing.assert_allclose(embedding, want[1], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(ood, want[2], rtol=1e-4, atol=1e-4)


def test_tensorflow_lite_gives_tensorflows_outputs_at_every_batch_size(
    tiny_network, full_config: ModelConfig
) -> None:
    reference = NetworkRunner(tiny_network, full_config)
    lite = NetworkRunner(tiny_network, full_config)
    root = logging.getLogger()
    handlers = list(root.handlers)
    assert lite.use_lite(threads=1)
    assert (lite.runtime, reference.runtime) == ("tflite", "tensorflow")
    # The converter's own root handler is gone: the request log lines keep theirs.
    assert root.handlers == handlers
    # Sizes change from call to call, as the batcher's do, on both sides of a chunk's edge
    # (a larger batch runs in chunks of LITE_CHUNK images, each on its own interpreter).
    chunk = inference.LITE_CHUNK
    sizes = [1, chunk + 1, 2, 32, chunk, 2 * chunk + 1, chunk - 1, 1]
    for seed, count in enumerate(sizes):
        pixels = _pixels(count, seed)
        _assert_same(lite.run(pixels), reference.run(pixels))
    # No rows: no network call on either runtime (TensorFlow's fused kernels refuse an empty
    # batch on AVX-512 machines), the same empty outputs.
    for runner in (lite, reference):
        probabilities, embedding, ood = runner.run(_pixels(0, 99))
        assert (probabilities.shape, embedding.shape) == ((0, CLASSES), (0, 8))
        assert ood is not None and ood.shape == (0,)


def test_concurrent_callers_each_get_their_own_rows(tiny_network, full_config: ModelConfig) -> None:
    """The interpreter runs one call at a time; 8 threads at once get their own outputs."""
    reference = NetworkRunner(tiny_network, full_config)
    lite = NetworkRunner(tiny_network, full_config)
    assert lite.use_lite(threads=2)
    inputs = [_pixels(1 + k % 4, 10 + k) for k in range(32)]
    expected = [reference.run(pixels) for pixels in inputs]
    start = threading.Barrier(8)

    def call(k: int) -> tuple:
        if k < 8:
            start.wait()
        return lite.run(inputs[k])

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(call, range(len(inputs))))
    for got, want in zip(results, expected, strict=True):
        _assert_same(got, want)


def test_a_runtime_that_disagrees_leaves_the_network_on_tensorflow(
    tiny_network, full_config: ModelConfig, monkeypatch: pytest.MonkeyPatch, caplog
) -> None:
    # A negative tolerance makes the real comparison on the real probe fail.
    monkeypatch.setattr(inference, "LITE_TOLERANCE", -1.0)
    runner = NetworkRunner(tiny_network, full_config)
    with caplog.at_level(logging.WARNING, logger="eye_model.inference"):
        assert not runner.use_lite()
    assert runner.runtime == "tensorflow"
    message = caplog.text
    assert "the network runs on TensorFlow, not TensorFlow Lite" in message
    assert "output 0 differs from TensorFlow's by up to" in message
    assert "EYE_MODEL_NETWORK_RUNTIME=tensorflow" in message
    pixels = _pixels(3, 20)
    _assert_same(runner.run(pixels), NetworkRunner(tiny_network, full_config).run(pixels))


def test_a_network_that_cannot_be_compiled_stays_on_tensorflow(
    tiny_network, full_config: ModelConfig, monkeypatch: pytest.MonkeyPatch, caplog
) -> None:
    import tensorflow as tf
    from tensorflow.lite.python.convert_phase import ConverterError

    def refuse(self: object) -> bytes:
        raise ConverterError("op not supported: SomeOp")

    monkeypatch.setattr(tf.lite.TFLiteConverter, "convert", refuse)
    runner = NetworkRunner(tiny_network, full_config)
    with caplog.at_level(logging.WARNING, logger="eye_model.inference"):
        assert not runner.use_lite()
    assert runner.runtime == "tensorflow"
    assert "it could not be compiled (ConverterError: op not supported: SomeOp)" in caplog.text
    pixels = _pixels(2, 21)
    _assert_same(runner.run(pixels), NetworkRunner(tiny_network, full_config).run(pixels))


def test_the_loaded_model_runs_the_runtime_its_setting_names(
    tiny_model_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    frame = {"image": [b64(encode(draw_fundus_like(seed=s), "JPEG")) for s in range(3)]}
    outputs = {}
    for runtime in ("tensorflow", "tflite"):
        monkeypatch.setenv("EYE_MODEL_NETWORK_RUNTIME", runtime)
        model = mlflow.pyfunc.load_model(str(tiny_model_path))
        assert model.unwrap_python_model().runner.runtime == runtime
        outputs[runtime] = model.predict(pd.DataFrame(frame))
    assert list(outputs["tflite"]["predicted_class"]) == list(
        outputs["tensorflow"]["predicted_class"]
    )
    np.testing.assert_allclose(
        outputs["tflite"]["prob_normal"].to_numpy(float),
        outputs["tensorflow"]["prob_normal"].to_numpy(float),
        atol=1e-5,
    )


def test_shared_runners_differ_by_runtime_and_threads(tiny_model_path: Path) -> None:
    network = tiny_model_path / "artifacts" / "network.keras"
    config = ModelConfig(TINY_IMAGE_SIZE)
    lite = shared_runner(network, config, runtime="tflite", threads=1)
    assert lite.runtime == "tflite"
    assert shared_runner(network, config, runtime="tflite", threads=1) is lite
    assert shared_runner(network, config, runtime="tensorflow").runtime == "tensorflow"

"""Streaming input: loading decodes nothing, the tf.data pipeline decodes as serving does,
and a file that fails to decode late is skipped and counted, never a crash."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from eye_model import data as data_module
from eye_model.config import CLASS_NAMES
from eye_model.data import (
    DecodeFailures,
    ImageSet,
    decode_all,
    iter_decoded_batches,
    load_dataset,
    make_tf_dataset,
)
from eye_model.preprocess import IMAGE_STAT_NAMES, decode_image
from tests.helpers import draw_fundus_like, encode

SIZE = 32


def _write(root: Path, per_class: int = 6) -> list[Path]:
    paths = []
    for k, name in enumerate(CLASS_NAMES):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            path = root / name / f"img_{i:02d}.jpg"
            path.write_bytes(encode(draw_fundus_like(64, seed=100 * k + i), "JPEG"))
            paths.append(path)
    return paths


def _cut_scan(path: Path) -> None:
    """Keep the header and cut the compressed data: the header check passes, decoding fails."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * 0.6)])


def test_loading_decodes_no_pixels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write(tmp_path)

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("load_dataset decoded an image")

    monkeypatch.setattr(data_module, "decode_image", refuse)
    dataset = load_dataset(tmp_path, SIZE, seed=0)
    assert len(dataset.train) + len(dataset.validation) + len(dataset.test) == 24


def test_pipeline_gives_the_serving_decoders_pixels_in_order(tmp_path: Path) -> None:
    paths = _write(tmp_path, per_class=3)
    paths[4] = paths[4].rename(paths[4].with_name("Fundusbild_äöü_眼底.jpg"))  # any file name
    images = ImageSet([str(p) for p in paths], np.arange(len(paths)) % 4, SIZE)
    batches = list(make_tf_dataset(images, batch_size=5, training=False))
    assert [len(y) for _, y in batches] == [5, 5, 2]
    pixels = np.concatenate([x.numpy() for x, _ in batches])
    labels = np.concatenate([y.numpy() for _, y in batches])
    expected = np.stack([decode_image(p.read_bytes(), SIZE).pixels for p in paths])
    assert pixels.dtype == np.float32
    np.testing.assert_array_equal(pixels, expected.astype(np.float32))
    np.testing.assert_array_equal(labels, images.labels)


def test_training_pipeline_shuffles_every_epoch_and_keeps_every_image(tmp_path: Path) -> None:
    paths = _write(tmp_path, per_class=4)
    images = ImageSet([str(p) for p in paths], np.arange(len(paths)), SIZE)
    dataset = make_tf_dataset(images, batch_size=4, training=True, seed=3)
    first = np.concatenate([y.numpy() for _, y in dataset])
    second = np.concatenate([y.numpy() for _, y in dataset])
    assert sorted(first.tolist()) == sorted(second.tolist()) == list(range(16))
    assert first.tolist() != second.tolist()


def test_a_file_that_fails_to_decode_late_is_skipped_and_counted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = _write(tmp_path)
    _cut_scan(paths[3])
    _cut_scan(paths[10])
    dataset = load_dataset(tmp_path, SIZE, seed=0)  # the headers are fine
    assert dataset.skipped_unreadable == 0
    failures = DecodeFailures()
    monkeypatch.setattr(data_module, "DECODE_FAILURES", failures)
    everything = ImageSet([str(p) for p in paths], np.zeros(len(paths), int), SIZE)
    for _ in range(2):  # counted once however often the file is read
        seen = sum(len(y) for _, y in make_tf_dataset(everything, batch_size=8, training=True))
        assert seen == 22
    assert len(failures) == 2
    batches = list(iter_decoded_batches(everything, batch_size=8, with_stats=True))
    assert [len(b.labels) for b in batches] == [7, 7, 8]
    assert list(batches[0].stats.columns) == list(IMAGE_STAT_NAMES)
    assert len(failures) == 2
    assert decode_all(everything).shape == (22, SIZE, SIZE, 3)


def test_a_bounded_sample_is_bounded_seeded_and_labelled(tmp_path: Path) -> None:
    images = ImageSet([f"f{i}" for i in range(100)], np.arange(100) % 4, SIZE)
    sample = images.sample(10, seed=1)
    assert len(sample) == 10
    assert sample.sources == images.sample(10, seed=1).sources
    assert [int(s[1:]) % 4 for s in sample.sources] == sample.labels.tolist()
    assert images.sample(500) is images


def test_an_empty_split_is_an_empty_stream() -> None:
    empty = ImageSet([], np.zeros(0, int), SIZE)
    assert list(make_tf_dataset(empty, batch_size=4, training=False)) == []
    assert list(iter_decoded_batches(empty)) == []
    assert decode_all(empty).shape == (0, SIZE, SIZE, 3)

"""The ImageFolder loader: folder names, unknown classes, corrupt files, duplicates, splits,
and the cache of generated synthetic sets."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from eye_model.config import CLASS_NAMES
from eye_model.data import (
    DataError,
    class_weights,
    discover_images,
    load_dataset,
    normalise_class_name,
    prepare_synthetic_data,
    stratified_split,
    synthetic_source_size,
)
from eye_model.synthetic import GENERATOR_VERSION
from tests.helpers import draw_fundus_like, encode

FOLDERS = {
    "cataract": "Cataract",
    "diabetic_retinopathy": "Diabetic Retinopathy",
    "glaucoma": "glaucoma",
    "normal": "NORMAL",
}


def _write_dataset(root: Path, per_class: int = 12) -> None:
    for k, name in enumerate(CLASS_NAMES):
        folder = root / FOLDERS[name]
        folder.mkdir(parents=True)
        for i in range(per_class):
            image = draw_fundus_like(64, seed=1000 * k + i)
            (folder / f"img_{i:03d}.jpg").write_bytes(encode(image, "JPEG"))


@pytest.mark.parametrize(
    ("folder", "expected"),
    [
        ("Diabetic Retinopathy", "diabetic_retinopathy"),
        ("diabetic-retinopathy", "diabetic_retinopathy"),
        ("diabetic_retinopathy", "diabetic_retinopathy"),
        ("  Cataract ", "cataract"),
        ("GLAUCOMA", "glaucoma"),
        ("2_glaucoma", "glaucoma"),
        ("Normal", "normal"),
    ],
)
def test_folder_names_are_normalised(folder: str, expected: str) -> None:
    assert normalise_class_name(folder) == expected


def test_unknown_folder_lists_the_expected_classes(tmp_path: Path) -> None:
    _write_dataset(tmp_path, per_class=2)
    (tmp_path / "myopia").mkdir()
    with pytest.raises(
        DataError, match="'myopia'.*cataract, diabetic_retinopathy, glaucoma, normal"
    ):
        discover_images(tmp_path)


def test_missing_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="is not a folder"):
        discover_images(tmp_path / "nope")
    tmp_path.joinpath("empty").mkdir()
    with pytest.raises(DataError, match="no class folders"):
        discover_images(tmp_path / "empty")


def test_discovery_ignores_non_images_and_hidden_files(tmp_path: Path) -> None:
    _write_dataset(tmp_path, per_class=3)
    (tmp_path / "Cataract" / "notes.txt").write_text("not an image")
    (tmp_path / "Cataract" / ".DS_Store").write_bytes(b"\x00")
    (tmp_path / "Cataract" / "UPPER.JPG").write_bytes(encode(draw_fundus_like(64, 99), "JPEG"))
    files = discover_images(tmp_path)
    assert len(files) == 13
    assert set(files["label"]) == set(CLASS_NAMES)


def test_corrupt_files_are_skipped_and_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _write_dataset(tmp_path)
    (tmp_path / "glaucoma" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    (tmp_path / "NORMAL" / "empty.png").write_bytes(b"")
    with caplog.at_level(logging.WARNING):
        dataset = load_dataset(tmp_path, 32, seed=1)
    assert dataset.skipped_unreadable == 2
    assert len(dataset.train) + len(dataset.validation) + len(dataset.test) == 48
    assert "skipped 2 unreadable image file(s) of 50" in caplog.text


def test_duplicates_never_cross_splits(tmp_path: Path) -> None:
    _write_dataset(tmp_path)
    # Copies of the same photo under other names, some in another class.
    source = (tmp_path / "Cataract" / "img_000.jpg").read_bytes()
    for i in range(5):
        (tmp_path / "Cataract" / f"copy_{i}.jpg").write_bytes(source)
    (tmp_path / "NORMAL" / "copy_elsewhere.jpg").write_bytes(source)
    dataset = load_dataset(tmp_path, 32, seed=3)
    assert dataset.skipped_duplicates == 6
    fingerprints = [
        {Path(source).read_bytes() for source in split.sources}
        for split in (dataset.train, dataset.validation, dataset.test)
    ]
    assert sum(len(f) for f in fingerprints) == 48
    assert not (fingerprints[0] & fingerprints[1])
    assert not (fingerprints[0] & fingerprints[2])
    assert not (fingerprints[1] & fingerprints[2])


def test_split_is_stratified_and_seeded(tmp_path: Path) -> None:
    _write_dataset(tmp_path, per_class=20)
    first = load_dataset(tmp_path, 32, seed=5)
    again = load_dataset(tmp_path, 32, seed=5)
    other = load_dataset(tmp_path, 32, seed=6)
    assert first.train.sources == again.train.sources
    assert first.train.sources != other.train.sources
    for split, share in ((first.train, 14), (first.validation, 3), (first.test, 3)):
        assert split.class_counts() == dict.fromkeys(CLASS_NAMES, share)
    assert len(first.train.sources) == 56
    assert first.train.image_size == 32


def test_stratified_split_covers_every_item_once() -> None:
    labels = np.repeat(np.arange(4), [50, 10, 30, 3])
    parts = stratified_split(labels, seed=0)
    joined = np.concatenate(parts)
    assert sorted(joined.tolist()) == list(range(len(labels)))


def test_class_weights_balance_the_classes() -> None:
    labels = np.repeat(np.arange(4), [100, 50, 25, 25])
    weights = class_weights(labels)
    contributions = [weights[k] * n for k, n in enumerate([100, 50, 25, 25])]
    assert max(contributions) == pytest.approx(min(contributions))


def test_synthetic_set_is_generated_once_into_the_cache_folder(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    folder = prepare_synthetic_data(2, 96, 5, cache)
    assert folder.parent == cache
    assert folder.name == f"synthetic-v2-g{GENERATOR_VERSION}-n2-s256-seed5"
    files = discover_images(folder)
    assert files["label"].value_counts().to_dict() == dict.fromkeys(CLASS_NAMES, 2)
    first = files["path"].iat[0]
    Path(first).write_bytes(b"kept")  # a second call must not regenerate a complete set
    assert prepare_synthetic_data(2, 96, 5, cache) == folder
    assert Path(first).read_bytes() == b"kept"
    # Another seed is another set, beside the first.
    assert prepare_synthetic_data(2, 96, 6, cache) != folder


def test_a_new_generator_version_never_reads_the_old_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import eye_model.data

    cache = tmp_path / "cache"
    current = prepare_synthetic_data(1, 96, 5, cache)
    monkeypatch.setattr(eye_model.data, "GENERATOR_VERSION", "older")
    older = prepare_synthetic_data(1, 96, 5, cache)
    assert older != current
    assert sorted(p.name for p in cache.iterdir()) == sorted([current.name, older.name])


def test_synthetic_images_are_larger_than_the_network_input() -> None:
    assert synthetic_source_size(96) == 256
    assert synthetic_source_size(224) == 336
    assert synthetic_source_size(300) == 448

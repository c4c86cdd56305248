"""Training data: folder discovery, label normalisation, de-duplication, splits, tf.data.

The public fundus dataset uses the ImageFolder layout ``<root>/<class>/<image>``;
without one, :func:`prepare_synthetic_data` generates a synthetic set in that
layout once into a cache folder (:attr:`eye_model.settings.Settings.cache_dir`).
Images are decoded once, by :func:`eye_model.preprocess.decode_image` (the
same function the served model calls), in a thread pool, and kept in memory
as uint8 arrays: 4,200 images at 224 px take about 630 MB.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from eye_model.config import CLASS_NAMES
from eye_model.preprocess import IMAGE_STAT_NAMES, FundusImage, ImageError, decode_image
from eye_model.synthetic import generate_dataset

logger = logging.getLogger(__name__)

#: Version of the synthetic cache layout; bump it when the generator changes.
SYNTHETIC_CACHE_VERSION = "v2"

#: File endings read as images (case-insensitive).
IMAGE_SUFFIXES: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif"}
)

# Other spellings seen in copies of the public dataset.
_ALIASES = {"dr": "diabetic_retinopathy", "diabetic": "diabetic_retinopathy", "healthy": "normal"}


class DataError(ValueError):
    """A dataset that cannot be used; the message names the problem and the fix."""


def normalise_class_name(folder_name: str) -> str:
    """Map a class folder name to its class: "Diabetic Retinopathy" → ``diabetic_retinopathy``.

    Args:
        folder_name: the folder's name as found on disk.

    Returns:
        One of ``CLASS_NAMES``.

    Raises:
        DataError: for a folder that is no known class, listing the expected ones.
    """
    key = re.sub(r"[\s\-]+", "_", folder_name.strip().lower())
    key = re.sub(r"^\d+[_.]", "", key)  # "1_cataract", "2.glaucoma"
    key = _ALIASES.get(key, key)
    if key not in CLASS_NAMES:
        raise DataError(
            f"class folder {folder_name!r} is not a known class; expected one folder per class "
            f"named {', '.join(CLASS_NAMES)}"
        )
    return key


def discover_images(data_dir: str | Path) -> pd.DataFrame:
    """List the image files of an ImageFolder dataset.

    Args:
        data_dir: the root folder, holding one folder per class.

    Returns:
        A frame with columns ``path`` and ``label``, sorted by path.

    Raises:
        DataError: for a missing root, an unknown class folder, or no images at all.
    """
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise DataError(f"data_dir {str(root)!r} is not a folder; pass the dataset's root folder")
    rows: list[tuple[str, str]] = []
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise DataError(
            f"data_dir {str(root)!r} has no class folders; expected {', '.join(CLASS_NAMES)}"
        )
    for folder in folders:
        label = normalise_class_name(folder.name)
        for path in sorted(folder.rglob("*")):
            if (
                path.is_file()
                and path.suffix.lower() in IMAGE_SUFFIXES
                and not path.name.startswith(".")
            ):
                rows.append((str(path), label))
    if not rows:
        raise DataError(f"data_dir {str(root)!r} holds no image files ({sorted(IMAGE_SUFFIXES)})")
    return pd.DataFrame(rows, columns=["path", "label"])


@dataclass
class ImageSet:
    """Decoded images of one split.

    Attributes:
        pixels: uint8 array (n, size, size, 3).
        labels: int array (n,), indices into ``CLASS_NAMES``.
        stats: image statistics per image (the columns of ``IMAGE_STAT_NAMES``).
        sources: the source file of each image (kept local, never logged).
    """

    pixels: np.ndarray
    labels: np.ndarray
    stats: pd.DataFrame
    sources: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.labels)

    def class_counts(self) -> dict[str, int]:
        """Images per class."""
        counts = np.bincount(self.labels, minlength=len(CLASS_NAMES))
        return {name: int(c) for name, c in zip(CLASS_NAMES, counts, strict=True)}


@dataclass
class Dataset:
    """The three splits and what happened while loading them."""

    train: ImageSet
    validation: ImageSet
    test: ImageSet
    skipped_unreadable: int = 0
    skipped_duplicates: int = 0
    description: dict[str, object] = field(default_factory=dict)


def _read_and_decode(path: str, image_size: int) -> tuple[str, FundusImage | str]:
    """The file's SHA-256 and decoded image, or an empty digest and the error message."""
    try:
        data = Path(path).read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        return digest, decode_image(data, image_size, with_stats=True)
    except (OSError, ImageError) as exc:
        return "", str(exc)


def stratified_split(
    labels: np.ndarray, *, seed: int, fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split indices into train/validation/test with the class shares of the whole.

    Args:
        labels: class index per item.
        seed: the random seed.
        fractions: shares of train, validation and test (summing to 1).

    Returns:
        Sorted index arrays of the three splits.
    """
    rng = np.random.default_rng(seed)
    parts: list[list[int]] = [[], [], []]
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        rng.shuffle(members)
        n = len(members)
        n_val = max(1, round(n * fractions[1])) if n >= 3 else 0
        n_test = max(1, round(n * fractions[2])) if n >= 3 else 0
        parts[1].extend(members[:n_val])
        parts[2].extend(members[n_val : n_val + n_test])
        parts[0].extend(members[n_val + n_test :])
    return tuple(np.sort(np.asarray(p, dtype=int)) for p in parts)  # type: ignore[return-value]


def load_dataset(
    data_dir: str | Path,
    image_size: int,
    *,
    seed: int = 42,
    workers: int | None = None,
) -> Dataset:
    """Discover, decode, de-duplicate and split an ImageFolder dataset.

    Unreadable files are skipped with a warning and counted. Files with the same
    content (SHA-256) count once, so no image can sit in two splits.

    Args:
        data_dir: the dataset root (one folder per class).
        image_size: side of the decoded square images, in pixels.
        seed: seed of the stratified split.
        workers: decoding threads (default: the number of CPUs).

    Returns:
        The dataset with its three splits.
    """
    files = discover_images(data_dir)
    workers = workers or os.cpu_count() or 2
    with ThreadPoolExecutor(max_workers=workers) as pool:
        decoded = list(pool.map(lambda p: _read_and_decode(p, image_size), files["path"]))
    seen: dict[str, int] = {}
    keep: list[int] = []
    images: list[FundusImage] = []
    unreadable = duplicates = 0
    for i, (digest, result) in enumerate(decoded):
        if isinstance(result, str):
            unreadable += 1
            logger.warning("skipping unreadable image #%d: %s", unreadable, result)
            continue
        if digest in seen:
            duplicates += 1
            first = seen[digest]
            if files["label"].iat[first] != files["label"].iat[i]:
                logger.warning("the same image is filed under two classes; keeping the first")
            continue
        seen[digest] = i
        keep.append(i)
        images.append(result)
    if unreadable:
        logger.warning("skipped %d unreadable image file(s) of %d", unreadable, len(files))
    if duplicates:
        logger.warning("skipped %d duplicate image file(s) (same content)", duplicates)
    if not keep:
        raise DataError(f"no readable images in {str(data_dir)!r}")
    labels = np.array([CLASS_NAMES.index(files["label"].iat[i]) for i in keep])
    sources = [files["path"].iat[i] for i in keep]
    stats = pd.DataFrame([img.stats for img in images], columns=list(IMAGE_STAT_NAMES))
    pixels = np.stack([img.require_pixels() for img in images])
    splits = stratified_split(labels, seed=seed)

    def subset(index: np.ndarray) -> ImageSet:
        return ImageSet(
            pixels=pixels[index],
            labels=labels[index],
            stats=stats.iloc[index].reset_index(drop=True),
            sources=[sources[i] for i in index],
        )

    dataset = Dataset(
        train=subset(splits[0]),
        validation=subset(splits[1]),
        test=subset(splits[2]),
        skipped_unreadable=unreadable,
        skipped_duplicates=duplicates,
    )
    dataset.description = {
        "images": len(keep),
        "train": len(dataset.train),
        "validation": len(dataset.validation),
        "test": len(dataset.test),
        "class_counts": dataset.train.class_counts(),
        "skipped_unreadable": unreadable,
        "skipped_duplicates": duplicates,
    }
    return dataset


def synthetic_cache_dir(cache_dir: Path, per_class: int, image_size: int, seed: int) -> Path:
    """Folder of one cached synthetic set inside the cache folder.

    Args:
        cache_dir: the cache folder (``Settings.cache_dir``).
        per_class: images per class.
        image_size: side of the generated images, in pixels.
        seed: dataset seed.

    Returns:
        ``cache_dir/synthetic-<version>-n<per_class>-s<image_size>-seed<seed>``.
    """
    name = f"synthetic-{SYNTHETIC_CACHE_VERSION}-n{per_class}-s{image_size}-seed{seed}"
    return Path(cache_dir) / name


def synthetic_source_size(image_size: int) -> int:
    """Side of generated images: above the input size, as real photos are (at least 256 px)."""
    return max(256, int(image_size * 1.5) // 8 * 8)


def prepare_synthetic_data(per_class: int, image_size: int, seed: int, cache_dir: Path) -> Path:
    """Generate the synthetic set once into the cache folder and return it.

    Args:
        per_class: images per class.
        image_size: side of the network input, in pixels; the images are larger
            (:func:`synthetic_source_size`).
        seed: dataset seed.
        cache_dir: the cache folder (``Settings.cache_dir``).

    Returns:
        The ImageFolder root of the set, complete.
    """
    source_size = synthetic_source_size(image_size)
    folder = synthetic_cache_dir(cache_dir, per_class, source_size, seed)
    done = folder / ".complete"
    if not done.exists():
        logger.info("generating %d synthetic images per class into %s", per_class, folder)
        generate_dataset(folder, per_class=per_class, image_size=source_size, seed=seed)
        done.write_text("ok\n")
    return folder


def class_weights(labels: np.ndarray) -> dict[int, float]:
    """Weights that make every class count as much as the others (n / (k * n_class))."""
    counts = np.bincount(labels, minlength=len(CLASS_NAMES)).astype(float)
    total, k = counts.sum(), np.count_nonzero(counts)
    return {i: float(total / (k * c)) if c else 0.0 for i, c in enumerate(counts)}


def make_tf_dataset(
    images: ImageSet,
    *,
    batch_size: int,
    training: bool,
    seed: int = 0,
) -> Any:
    """A tf.data pipeline over decoded images: shuffle, batch, prefetch.

    Augmentation is applied on top by ``augment.augment_dataset`` (the recipe owns it).

    Args:
        images: the split.
        batch_size: images per batch.
        training: shuffle (training split) or not (evaluation).
        seed: shuffle seed.

    Returns:
        A ``tf.data.Dataset`` of (float32 images 0-255, int labels).
    """
    import tensorflow as tf

    dataset = tf.data.Dataset.from_tensor_slices((images.pixels, images.labels))
    if training:
        dataset = dataset.shuffle(len(images), seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.batch(batch_size)
    dataset = dataset.map(
        lambda x, y: (tf.cast(x, tf.float32), y), num_parallel_calls=tf.data.AUTOTUNE
    )
    return dataset.prefetch(tf.data.AUTOTUNE)

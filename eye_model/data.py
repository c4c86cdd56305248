"""Training data: folder discovery, label normalisation, de-duplication, splits, streaming.

The public fundus dataset uses the ImageFolder layout ``<root>/<class>/<image>``;
without one, :func:`prepare_synthetic_data` generates a synthetic set in that
layout once into a cache folder (:attr:`eye_model.settings.Settings.cache_dir`).

Nothing holds the images in memory: loading reads each file once to hash its bytes
(duplicates) and check its header (unreadable files), and the splits are lists of
files. Pixels are decoded when a split is read, by
:func:`eye_model.preprocess.decode_image` (the same function the served model calls):
in a ``tf.data`` pipeline for training (:func:`make_tf_dataset`) and batch by batch
for calibration and profiles (:func:`iter_decoded_batches`). A file that fails to
decode then is skipped and counted (:class:`DecodeFailures`), never a crash.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from eye_model.config import CLASS_NAMES
from eye_model.preprocess import IMAGE_STAT_NAMES, ImageError, check_image_header, decode_image
from eye_model.synthetic import GENERATOR_VERSION, generate_dataset

logger = logging.getLogger(__name__)

#: Version of the synthetic cache layout; the generator's own version is part of the key too.
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
    """The image files of one split; pixels are decoded only when the split is read.

    Attributes:
        sources: the image files (kept local, never logged).
        labels: int array (n,), indices into ``CLASS_NAMES``.
        image_size: side of the square the files are decoded to, in pixels.
    """

    sources: list[str]
    labels: np.ndarray
    image_size: int

    def __len__(self) -> int:
        return len(self.labels)

    def class_counts(self) -> dict[str, int]:
        """Images per class."""
        counts = np.bincount(self.labels, minlength=len(CLASS_NAMES))
        return {name: int(c) for name, c in zip(CLASS_NAMES, counts, strict=True)}

    def sample(self, n: int, seed: int = 0) -> ImageSet:
        """At most ``n`` images drawn without replacement (all of them when fewer), in order."""
        if len(self) <= n:
            return self
        index = np.sort(np.random.default_rng(seed).choice(len(self), n, replace=False))
        return ImageSet([self.sources[i] for i in index], self.labels[index], self.image_size)


@dataclass
class Dataset:
    """The three splits and what happened while loading them."""

    train: ImageSet
    validation: ImageSet
    test: ImageSet
    skipped_unreadable: int = 0
    skipped_duplicates: int = 0
    description: dict[str, object] = field(default_factory=dict)


class DecodeFailures:
    """Files that passed the header check but failed to decode later; counted, never fatal.

    Thread-safe: the ``tf.data`` pipeline and the decoding threads report here. A file is
    counted once however often it is read (once per epoch in training).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._failed: set[str] = set()

    def report(self, source: str, error: str) -> None:
        """Record one failure; the first time a file fails, log the reason (never its name)."""
        with self._lock:
            if source in self._failed:
                return
            self._failed.add(source)
            count = len(self._failed)
        logger.warning("skipping an image that failed to decode (#%d): %s", count, error)

    def __len__(self) -> int:
        with self._lock:
            return len(self._failed)


#: Decode failures of this process (training runs one dataset per process).
DECODE_FAILURES = DecodeFailures()


def _scan_file(path: str) -> tuple[str, str]:
    """The file's SHA-256 and an empty error, or an empty digest and the error message.

    Only the header is parsed (format, size); no pixel is decoded.
    """
    try:
        data = Path(path).read_bytes()
        check_image_header(data)
        return hashlib.sha256(data).hexdigest(), ""
    except (OSError, ImageError) as exc:
        return "", str(exc)


def read_image_file(
    path: str, image_size: int, *, with_stats: bool = False, failures: DecodeFailures | None = None
) -> tuple[np.ndarray, dict[str, float]] | None:
    """Decode one image file as the served model would, or None (reported) when it fails.

    Args:
        path: the image file.
        image_size: side of the decoded square, in pixels.
        with_stats: also compute the image statistics (``IMAGE_STAT_NAMES``).
        failures: where a failure is reported (default: :data:`DECODE_FAILURES`).

    Returns:
        uint8 pixels (image_size, image_size, 3) and the statistics (empty without
        ``with_stats``), or None.
    """
    try:
        image = decode_image(Path(path).read_bytes(), image_size, with_stats=with_stats)
    except (OSError, ImageError) as exc:
        (failures or DECODE_FAILURES).report(path, str(exc))
        return None
    return image.require_pixels(), image.stats


@dataclass
class DecodedBatch:
    """A batch of decoded images: the files that failed to decode are left out."""

    pixels: np.ndarray
    labels: np.ndarray
    stats: pd.DataFrame


def iter_decoded_batches(
    images: ImageSet,
    *,
    batch_size: int = 64,
    with_stats: bool = False,
    workers: int | None = None,
) -> Iterator[DecodedBatch]:
    """Decode a split batch by batch in a thread pool; memory holds one batch at a time.

    Args:
        images: the split.
        batch_size: images per batch (the last may be smaller, or smaller by failures).
        with_stats: compute the image statistics (the ``stats`` frame's columns are
            ``IMAGE_STAT_NAMES``; empty without).
        workers: decoding threads (default: the number of CPUs).

    Yields:
        Decoded batches in the split's order; empty batches are not yielded.
    """
    columns = list(IMAGE_STAT_NAMES) if with_stats else []
    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 2) as pool:
        for start in range(0, len(images), batch_size):
            paths = images.sources[start : start + batch_size]
            decoded = list(
                pool.map(
                    lambda p: read_image_file(p, images.image_size, with_stats=with_stats), paths
                )
            )
            kept = [i for i, item in enumerate(decoded) if item is not None]
            if not kept:
                continue
            yield DecodedBatch(
                pixels=np.stack([decoded[i][0] for i in kept]),  # type: ignore[index]
                labels=images.labels[start : start + batch_size][kept],
                stats=pd.DataFrame([decoded[i][1] for i in kept], columns=columns),  # type: ignore[index]
            )


def decode_all(images: ImageSet) -> np.ndarray:
    """All of a split's pixels in one uint8 array: only for bounded samples (see ``sample``)."""
    batches = [b.pixels for b in iter_decoded_batches(images)]
    if not batches:
        return np.zeros((0, images.image_size, images.image_size, 3), np.uint8)
    return np.concatenate(batches)


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
    """Discover, check, de-duplicate and split an ImageFolder dataset, decoding nothing.

    Each file is read once to hash its bytes and check its header. Unreadable files are
    skipped with a warning and counted. Files with the same content (SHA-256) count once,
    so no image can sit in two splits.

    Args:
        data_dir: the dataset root (one folder per class).
        image_size: side of the square the splits' files are decoded to, in pixels.
        seed: seed of the stratified split.
        workers: reading threads (default: the number of CPUs).

    Returns:
        The dataset with its three splits (lists of files).
    """
    files = discover_images(data_dir)
    workers = workers or os.cpu_count() or 2
    with ThreadPoolExecutor(max_workers=workers) as pool:
        scanned = list(pool.map(_scan_file, files["path"]))
    seen: dict[str, int] = {}
    keep: list[int] = []
    unreadable = duplicates = 0
    for i, (digest, error) in enumerate(scanned):
        if error:
            unreadable += 1
            logger.warning("skipping unreadable image #%d: %s", unreadable, error)
            continue
        if digest in seen:
            duplicates += 1
            first = seen[digest]
            if files["label"].iat[first] != files["label"].iat[i]:
                logger.warning("the same image is filed under two classes; keeping the first")
            continue
        seen[digest] = i
        keep.append(i)
    if unreadable:
        logger.warning("skipped %d unreadable image file(s) of %d", unreadable, len(files))
    if duplicates:
        logger.warning("skipped %d duplicate image file(s) (same content)", duplicates)
    if not keep:
        raise DataError(f"no readable images in {str(data_dir)!r}")
    labels = np.array([CLASS_NAMES.index(files["label"].iat[i]) for i in keep])
    sources = [files["path"].iat[i] for i in keep]
    splits = stratified_split(labels, seed=seed)

    def subset(index: np.ndarray) -> ImageSet:
        return ImageSet([sources[i] for i in index], labels[index], image_size)

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
        ``cache_dir/synthetic-<version>-g<generator>-n<per_class>-s<image_size>-seed<seed>``,
        ``<generator>`` being the generator's version: a new generator never serves the
        images of an old one.
    """
    name = (
        f"synthetic-{SYNTHETIC_CACHE_VERSION}-g{GENERATOR_VERSION}"
        f"-n{per_class}-s{image_size}-seed{seed}"
    )
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
    """A tf.data pipeline that reads the files: shuffle, decode in parallel, batch, prefetch.

    Files are decoded by :func:`read_image_file` (the serving decoder) on every pass, in
    parallel and in order; one that fails is dropped from the stream and counted in
    :data:`DECODE_FAILURES`. Memory holds the prefetched batches, not the split.
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

    image_size = images.image_size
    blank = np.zeros((image_size, image_size, 3), np.uint8)

    def decode(path: bytes) -> tuple[np.ndarray, bool]:
        item = read_image_file(os.fsdecode(path), image_size)
        return (blank, False) if item is None else (item[0], True)

    def load(path: Any, label: Any) -> tuple[Any, Any, Any]:
        pixels, ok = tf.numpy_function(decode, [path], [tf.uint8, tf.bool], stateful=False)
        pixels.set_shape((image_size, image_size, 3))
        ok.set_shape(())
        return pixels, label, ok

    # File names as the file system's bytes: any name a folder holds survives the round trip.
    paths = tf.constant([os.fsencode(p) for p in images.sources], dtype=tf.string)
    dataset = tf.data.Dataset.from_tensor_slices((paths, images.labels.astype(np.int64)))
    if training:
        dataset = dataset.shuffle(len(images), seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    dataset = dataset.filter(lambda x, y, ok: ok).map(lambda x, y, ok: (x, y))
    return batch_images(dataset, batch_size=batch_size)


def batch_images(dataset: Any, *, batch_size: int) -> Any:
    """Batch (uint8 images, labels), cast to float32 0-255, prefetch (the recipe augments)."""
    import tensorflow as tf

    dataset = dataset.batch(batch_size)
    dataset = dataset.map(
        lambda x, y: (tf.cast(x, tf.float32), y), num_parallel_calls=tf.data.AUTOTUNE
    )
    return dataset.prefetch(tf.data.AUTOTUNE)

"""k-fold cross-validation: near-duplicate groups, grouped stratified folds, nested runs.

A small real archive holds the same eye more than once: the same photograph re-saved
at another JPEG quality or size. Such copies differ in bytes (so the SHA-256
de-duplication of :mod:`eye_model.data` keeps both) but not in content; one in the
training folds and one in the held-out fold would make the estimate too good. Each
image gets a difference hash of a small greyscale thumbnail; images whose hashes differ
in few bits are one group, and :class:`sklearn.model_selection.StratifiedGroupKFold`
keeps every group in one fold while keeping the class shares of the whole.

Each fold is a nested MLflow run (tag ``role=cv_fold``) under the training run, holding
the fold's ``cv_accuracy``, ``cv_macro_f1`` and per-class figures; the parent gets their
mean and standard deviation (``cv_accuracy_mean``, ``cv_accuracy_std``,
``cv_macro_f1_mean``, ``cv_macro_f1_std``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from PIL import Image
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from sklearn.model_selection import StratifiedGroupKFold

from eye_model.config import CLASS_NAMES
from eye_model.data import ImageSet, iter_decoded_batches
from eye_model.evaluate import calibrated_probabilities, classification_metrics

logger = logging.getLogger(__name__)

#: Side of the difference hash: 16 x 16 = 256 bits. An 8 x 8 hash cannot tell fundus
#: photographs apart (a bright disc on black at 9 x 8 px): distinct generated images
#: collided at distance 0.
HASH_SIZE = 16
#: Largest Hamming distance (of 256 bits) between two hashes of the same photograph.
#: Measured on 258 generated images: re-encoded at quality 60 and 3/4 size, at most
#: 14 bits moved; two distinct images were never closer than 24.
NEAR_DUPLICATE_BITS = 18

#: Fits a network: (training images, validation images, seed) → the fitted network,
#: whose output is class logits.
FitFunction = Callable[[ImageSet, ImageSet, int], Any]


def difference_hash(path: str | Path, size: int = HASH_SIZE) -> np.ndarray:
    """Difference hash of an image file: is each pixel brighter than its left neighbour?

    The image is reduced to a ``(size + 1) x size`` greyscale thumbnail (JPEGs are
    decoded at a reduced scale), so re-encoding, resizing and small colour changes move
    few bits.

    Args:
        path: the image file.
        size: the hash has ``size * size`` bits.

    Returns:
        The hash as ``size * size / 8`` packed bytes (uint8).

    Raises:
        OSError: for a file Pillow cannot read.
    """
    with Image.open(path) as image:
        image.draft("L", (size * 4, size * 4))
        thumbnail = image.convert("L").resize((size + 1, size), Image.Resampling.LANCZOS)
    grey = np.asarray(thumbnail, dtype=np.int16)
    return np.packbits((grey[:, 1:] > grey[:, :-1]).ravel())


def near_duplicate_groups(
    hashes: np.ndarray, max_bits: int = NEAR_DUPLICATE_BITS, chunk: int = 512
) -> np.ndarray:
    """Group images whose hashes are within ``max_bits`` (transitively: A~B, B~C → one group).

    Args:
        hashes: (n, bytes) packed hashes from :func:`difference_hash`.
        max_bits: the largest Hamming distance within a group.
        chunk: rows compared at once (memory: chunk x n x bytes).

    Returns:
        (n,) group number of each image, 0 … groups-1.
    """
    n = len(hashes)
    rows: list[np.ndarray] = []
    cols: list[np.ndarray] = []
    for start in range(0, n, chunk):
        block = hashes[start : start + chunk]
        distance = np.bitwise_count(block[:, None, :] ^ hashes[None, :, :]).sum(axis=2)
        i, j = np.nonzero(distance <= max_bits)
        rows.append(i + start)
        cols.append(j)
    row, col = np.concatenate(rows), np.concatenate(cols)
    graph = coo_matrix((np.ones(len(row), np.int8), (row, col)), shape=(n, n))
    _, groups = connected_components(graph, directed=False)
    return groups.astype(int)


def photo_groups(sources: Sequence[str]) -> np.ndarray:
    """Near-duplicate group of each image file; an unreadable file is a group of its own."""
    size_bytes = HASH_SIZE * HASH_SIZE // 8
    hashes = np.zeros((len(sources), size_bytes), np.uint8)
    readable = np.ones(len(sources), bool)
    for k, source in enumerate(sources):
        try:
            hashes[k] = difference_hash(source)
        except OSError:
            readable[k] = False
    groups = np.full(len(sources), -1)
    if readable.any():
        groups[readable] = near_duplicate_groups(hashes[readable])
    alone = np.flatnonzero(~readable)
    groups[alone] = groups.max() + 1 + np.arange(len(alone))
    return groups


def assign_folds(labels: np.ndarray, groups: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Fold of each image: grouped (a group in one fold) and stratified by class.

    Args:
        labels: (n,) class index of each image.
        groups: (n,) near-duplicate group of each image.
        folds: number of folds k (at least 2).
        seed: shuffles the groups.

    Returns:
        (n,) fold number of each image, 0 … k-1.

    Raises:
        ValueError: fewer than 2 folds, or fewer groups than folds, naming the fix.
    """
    if folds < 2:
        raise ValueError(f"folds={folds}: cross-validation needs at least 2 folds (0: off)")
    distinct = len(np.unique(groups))
    if distinct < folds:
        raise ValueError(
            f"folds={folds} but the data holds only {distinct} distinct photographs; "
            "use fewer folds or more images"
        )
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    fold_of = np.full(len(labels), -1)
    for fold, (_, held_out) in enumerate(splitter.split(np.zeros(len(labels)), labels, groups)):
        fold_of[held_out] = fold
    return fold_of


def concat_image_sets(parts: Sequence[ImageSet]) -> ImageSet:
    """One image set holding the images of ``parts``, in order."""
    return ImageSet(
        sources=[s for p in parts for s in p.sources],
        labels=np.concatenate([p.labels for p in parts]),
        image_size=parts[0].image_size,
    )


def subset_image_set(images: ImageSet, index: np.ndarray) -> ImageSet:
    """The images of ``images`` at ``index``."""
    return ImageSet(
        sources=[images.sources[i] for i in index],
        labels=images.labels[index],
        image_size=images.image_size,
    )


def _inner_validation(
    labels: np.ndarray, groups: np.ndarray, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """About a sixth of the training folds, grouped and stratified, for early stopping."""
    splits = min(6, len(np.unique(groups)))
    splitter = StratifiedGroupKFold(n_splits=splits, shuffle=True, random_state=seed)
    return next(splitter.split(np.zeros(len(labels)), labels, groups))


def predict_logits(network: Any, images: ImageSet) -> tuple[np.ndarray, np.ndarray]:
    """Class logits (inference mode) and labels of a split, decoded batch by batch.

    A file that fails to decode is left out of both.
    """
    logits, labels = [], []
    for batch in iter_decoded_batches(images):
        logits.append(np.asarray(network(batch.pixels.astype(np.float32), training=False)))
        labels.append(batch.labels)
    if not logits:
        return np.zeros((0, len(CLASS_NAMES))), np.zeros(0, int)
    return np.concatenate(logits), np.concatenate(labels)


@dataclass
class CrossValidation:
    """What a cross-validation produced: per-fold metrics, and their mean and spread."""

    fold_metrics: list[dict[str, float]]
    summary: dict[str, float]
    child_run_ids: list[str]


def summarise_folds(fold_metrics: Sequence[dict[str, float]]) -> dict[str, float]:
    """Mean and standard deviation (ddof=1, the spread between folds) of the headline metrics."""
    summary: dict[str, float] = {}
    for name in ("cv_accuracy", "cv_macro_f1"):
        values = np.array([m[name] for m in fold_metrics], float)
        summary[f"{name}_mean"] = float(values.mean())
        summary[f"{name}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    return summary


def run_cross_validation(
    images: ImageSet, folds: int, seed: int, fit: FitFunction
) -> CrossValidation:
    """k-fold cross-validation of ``fit`` on ``images``, as nested runs of the active run.

    For fold i the held-out images are fold i; the network is fitted on the other folds,
    with a grouped stratified sixth of them for early stopping, and judged on fold i.
    The mean and spread are logged on the active (parent) run.

    Args:
        images: every image to cross-validate (with their source files, for the hashes).
        folds: number of folds k.
        seed: seed of the fold assignment and of each fold's fit.
        fit: fits a network (see :data:`FitFunction`).

    Returns:
        The per-fold metrics, the summary and the child runs' ids.
    """
    groups = photo_groups(images.sources)
    fold_of = assign_folds(images.labels, groups, folds, seed)
    merged = len(images) - len(np.unique(groups))
    mlflow.log_params({"cv.folds": folds, "cv.near_duplicates_grouped": merged})
    if merged:
        logger.info("cross-validation: %d near-duplicate photo(s) kept with their twin", merged)
    results: list[dict[str, float]] = []
    run_ids: list[str] = []
    for fold in range(folds):
        held_out = np.flatnonzero(fold_of == fold)
        rest = np.flatnonzero(fold_of != fold)
        fit_part, stop_part = _inner_validation(images.labels[rest], groups[rest], seed + fold)
        with mlflow.start_run(run_name=f"fold-{fold}", nested=True) as child:
            mlflow.set_tags({"role": "cv_fold", "cv.fold": str(fold)})
            mlflow.log_params(
                {
                    "cv.train": len(fit_part),
                    "cv.validation": len(stop_part),
                    "cv.held_out": len(held_out),
                }
            )
            network = fit(
                subset_image_set(images, rest[fit_part]),
                subset_image_set(images, rest[stop_part]),
                seed + fold,
            )
            logits, labels = predict_logits(network, subset_image_set(images, held_out))
            probabilities = calibrated_probabilities(logits, 1.0)
            metrics = classification_metrics(labels, probabilities, prefix="cv_")
            mlflow.log_metrics(metrics)
        results.append(metrics)
        run_ids.append(child.info.run_id)
        logger.info("fold %d/%d: macro-F1 %.3f", fold + 1, folds, metrics["cv_macro_f1"])
    summary = summarise_folds(results)
    mlflow.log_metrics(summary)
    return CrossValidation(results, summary, run_ids)

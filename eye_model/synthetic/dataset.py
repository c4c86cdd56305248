"""Writing a synthetic dataset in the ImageFolder layout, one seeded generator per image."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tqdm import tqdm

from eye_model.config import CLASS_NAMES
from eye_model.synthetic.drawing import draw_fundus
from eye_model.synthetic.params import MIN_IMAGE_SIZE
from eye_model.synthetic.sampling import sample_fundus_params


def make_image_rng(seed: int, class_index: int, image_index: int) -> np.random.Generator:
    """Random generator of one dataset image, independent of generation order.

    Args:
        seed: dataset seed (>= 0).
        class_index: index of the class in :data:`CLASS_NAMES`.
        image_index: index of the image within its class.

    Returns:
        A generator seeded from (seed, class_index, image_index).
    """
    if seed < 0:
        raise ValueError(f"seed={seed} must be 0 or above")
    return np.random.default_rng(np.random.SeedSequence([seed, class_index, image_index]))


def generate_dataset(
    out_dir: str | Path,
    per_class: int,
    image_size: int = 512,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, int]:
    """Write a synthetic fundus dataset in the ImageFolder layout.

    Files are ``out_dir/<class>/<class>_<00000>.jpg``. Each image is seeded
    from (seed, class index, image index), so the same seed gives
    byte-identical files whatever the order of generation. Earlier files of
    this naming pattern beyond ``per_class`` are removed so the folder holds
    exactly the returned counts.

    Args:
        out_dir: the dataset folder (created if missing).
        per_class: number of images per class (>= 0).
        image_size: side of the square images, in pixels.
        seed: dataset seed (>= 0).
        progress: show a tqdm progress bar.

    Returns:
        The number of images written per class.

    Raises:
        ValueError: for a negative per_class or seed, or a too small image_size.
    """
    if per_class < 0:
        raise ValueError(f"per_class={per_class} must be 0 or above")
    if seed < 0:
        raise ValueError(f"seed={seed} must be 0 or above")
    if image_size < MIN_IMAGE_SIZE:
        raise ValueError(f"image_size={image_size} is too small; use {MIN_IMAGE_SIZE} or more")
    root = Path(out_dir)
    for label in CLASS_NAMES:
        folder = root / label
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob(f"{label}_*.jpg"):
            index = stale.stem[len(label) + 1 :]
            if index.isdigit() and int(index) >= per_class:
                stale.unlink()
    jobs = [(ci, label, i) for ci, label in enumerate(CLASS_NAMES) for i in range(per_class)]
    counts = dict.fromkeys(CLASS_NAMES, 0)
    for class_index, label, index in tqdm(
        jobs, desc="synthetic fundus", unit="img", disable=not progress
    ):
        params = sample_fundus_params(label, make_image_rng(seed, class_index, index), image_size)
        image = draw_fundus(params)
        image.save(
            root / label / f"{label}_{index:05d}.jpg", format="JPEG", quality=params.jpeg_quality
        )
        counts[label] += 1
    return counts

"""The quality gate's evaluation: a row the model could not score counts as wrong."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from eye_model.config import CLASS_NAMES
from eye_model.evaluate import classification_metrics, evaluate_model_on_folder
from tests.conftest import TrainedModel
from tests.helpers import draw_fundus_like, encode


def test_failed_rows_count_as_wrong_not_as_cataract() -> None:
    labels = np.array([0, 0])  # two cataract images the model failed on
    probabilities = np.full((2, len(CLASS_NAMES)), np.nan)
    metrics = classification_metrics(labels, probabilities, prefix="", failed=np.array([1, 1]))
    assert metrics["accuracy"] == 0.0
    assert metrics["recall_cataract"] == 0.0
    # Before: NaN rows filled with zeros had argmax 0 (cataract) and scored accuracy 1.0.
    zero_filled = classification_metrics(labels, np.zeros((2, len(CLASS_NAMES))), prefix="")
    assert zero_filled["accuracy"] == 1.0


@pytest.mark.parametrize("failed_class", range(len(CLASS_NAMES)))
def test_a_failed_row_of_any_class_lowers_accuracy(failed_class: int) -> None:
    labels = np.arange(len(CLASS_NAMES))
    probabilities = np.eye(len(CLASS_NAMES))  # every row right
    failed = labels == failed_class
    probabilities[failed] = np.nan
    metrics = classification_metrics(labels, probabilities, prefix="", failed=failed)
    assert metrics["accuracy"] == pytest.approx(0.75)
    assert metrics[f"recall_{CLASS_NAMES[failed_class]}"] == 0.0


def test_corrupt_files_of_every_class_are_counted_wrong(
    trained_model: TrainedModel, tmp_path: Path
) -> None:
    """On a folder, each class gets corrupt files: they are errors and wrong answers."""
    folder = tmp_path / "gate"
    sources = sorted(trained_model.data_dir.rglob("*.jpg"))
    for k, name in enumerate(CLASS_NAMES):
        (folder / name).mkdir(parents=True)
        good = [p for p in sources if p.parent.name == name][:3]
        for i, path in enumerate(good):
            (folder / name / f"ok-{i}.jpg").write_bytes(path.read_bytes())
        half = encode(draw_fundus_like(96, seed=k))
        (folder / name / "corrupt.jpg").write_bytes(half[: len(half) // 3])
    clean = evaluate_model_on_folder(str(trained_model.model_dir), folder)
    assert clean["errors"] == len(CLASS_NAMES)
    assert clean["n"] == 4 * len(CLASS_NAMES)
    # At most 3 of 4 images per class can be right: the corrupt one never is.
    for name in CLASS_NAMES:
        assert clean[f"recall_{name}"] <= 0.75 + 1e-9
    assert clean["accuracy"] <= 0.75 + 1e-9

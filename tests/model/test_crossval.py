"""Cross-validation: re-encoded copies of a photograph stay in one fold; folds are nested runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient
from PIL import Image

from eye_model.config import CLASS_NAMES
from eye_model.crossval import assign_folds, difference_hash, photo_groups
from eye_model.data import discover_images
from eye_model.synthetic import generate_dataset


def plant_reencoded_copies(root: Path, every: int = 3) -> dict[str, str]:
    """Save every ``every``-th image again, smaller and at a lower JPEG quality.

    Returns:
        copy path → original path.
    """
    planted = {}
    for k, original in enumerate(sorted(root.glob("*/*.jpg"))):
        if k % every:
            continue
        with Image.open(original) as image:
            smaller = image.resize((image.width * 7 // 8, image.height * 7 // 8))
            copy = original.with_name(f"{original.stem}_copy.jpg")
            smaller.save(copy, "JPEG", quality=70)
        planted[str(copy)] = str(original)
    return planted


@pytest.fixture(scope="module")
def archive_with_twins(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("twins") / "archive"
    generate_dataset(root, per_class=15, image_size=192, seed=11, progress=False)
    return root, plant_reencoded_copies(root)


def test_a_reencoded_copy_hashes_near_its_original_and_far_from_others(
    archive_with_twins: tuple[Path, dict[str, str]],
) -> None:
    _, planted = archive_with_twins
    copy, original = next(iter(planted.items()))
    other = next(o for o in planted.values() if o != original)
    near = np.bitwise_count(difference_hash(copy) ^ difference_hash(original)).sum()
    far = np.bitwise_count(difference_hash(copy) ^ difference_hash(other)).sum()
    assert difference_hash(copy).size * 8 == 256
    assert near <= 18 < far


def test_duplicates_never_straddle_folds(archive_with_twins: tuple[Path, dict[str, str]]) -> None:
    root, planted = archive_with_twins
    files = discover_images(root)
    sources = files["path"].tolist()
    labels = np.array([CLASS_NAMES.index(c) for c in files["label"]])
    groups = photo_groups(sources)
    # Every copy is grouped with its original, and nothing else is merged.
    assert len(np.unique(groups)) == len(sources) - len(planted)
    index = {path: k for k, path in enumerate(sources)}
    for copy, original in planted.items():
        assert groups[index[copy]] == groups[index[original]]
    for seed in (0, 1, 2):
        folds = assign_folds(labels, groups, 5, seed)
        assert set(folds) == set(range(5))
        for copy, original in planted.items():
            assert folds[index[copy]] == folds[index[original]], (seed, copy)
        # Stratified: every fold holds every class.
        for fold in range(5):
            assert set(labels[folds == fold]) == set(range(len(CLASS_NAMES)))


def test_too_many_folds_names_the_fix() -> None:
    with pytest.raises(ValueError, match="only 3 distinct photographs"):
        assign_folds(np.array([0, 1, 2, 2]), np.array([0, 1, 2, 2]), 4, 0)
    with pytest.raises(ValueError, match="at least 2 folds"):
        assign_folds(np.array([0, 1]), np.array([0, 1]), 1, 0)


@pytest.mark.slow
def test_training_with_folds_logs_nested_runs_and_their_spread(
    archive_with_twins: tuple[Path, dict[str, str]], tracking_store: str
) -> None:
    from eye_model.train import TrainConfig, run_training

    root, planted = archive_with_twins
    result = run_training(
        TrainConfig(data_dir=str(root), image_size=64, epochs=2, batch_size=16, folds=3, seed=5)
    )
    client = MlflowClient(tracking_store)
    parent = client.get_run(result.run_id)
    assert parent.data.tags["role"] == "training"
    assert parent.data.params["cv.folds"] == "3"
    assert parent.data.params["cv.near_duplicates_grouped"] == str(len(planted))
    children = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{result.run_id}'",
    )
    assert len(children) == 3
    assert sorted(c.data.tags["cv.fold"] for c in children) == ["0", "1", "2"]
    assert {c.data.tags["role"] for c in children} == {"cv_fold"}
    held_out = sum(int(c.data.params["cv.held_out"]) for c in children)
    assert held_out == len(list(root.glob("*/*.jpg")))  # every image judged exactly once
    for name in ("cv_accuracy", "cv_macro_f1"):
        values = np.array([c.data.metrics[name] for c in children])
        assert parent.data.metrics[f"{name}_mean"] == pytest.approx(values.mean())
        assert parent.data.metrics[f"{name}_std"] == pytest.approx(values.std(ddof=1))
    for child in children:
        assert len(client.get_metric_history(child.info.run_id, "epoch_loss")) == 2
    # The final model is trained on the usual split and logged on the parent as always.
    assert "test_macro_f1" in parent.data.metrics
    assert result.model_uri == f"runs:/{result.run_id}/model"

"""What ``ood_score`` means for a trained model: about 1 % of held-out generated images at or
above 1.0, clearly foreign pictures far above it, and null for models stored without it."""

from __future__ import annotations

import base64
import io
import json
import shutil
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from eye_model.drift.validation import render_pool
from eye_model.ood import OOD_THRESHOLD, OOD_WARNING
from tests.conftest import TrainedModel

pytestmark = pytest.mark.slow


def _encoded(images: list[Image.Image]) -> list[str]:
    out = []
    for image in images:
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=90)
        out.append(base64.b64encode(buffer.getvalue()).decode("ascii"))
    return out


@pytest.fixture(scope="module")
def loaded(trained_model: TrainedModel) -> mlflow.pyfunc.PyFuncModel:
    with pytest.MonkeyPatch.context() as patch:
        # Score every picture: the out-of-distribution score is judged without the fundus check.
        patch.setenv("EYE_MODEL_FUNDUS_CHECK", "off")
        return mlflow.pyfunc.load_model(str(trained_model.model_dir))


def _natural_and_synthetic_foreign_pictures() -> dict[str, Image.Image]:
    import skimage.data

    rng = np.random.default_rng(0)
    pictures: dict[str, Image.Image] = {
        f"noise-{i}": Image.fromarray(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8))
        for i in range(4)
    }
    for colour in ((255, 255, 255), (30, 120, 200), (128, 128, 128), (20, 160, 40)):
        pictures[f"solid-{colour}"] = Image.new("RGB", (256, 256), colour)
    for name in (
        "astronaut",
        "camera",
        "chelsea",
        "coffee",
        "rocket",
        "horse",
        "page",
        "text",
        "checkerboard",
        "coins",
        "moon",
        "brick",
        "grass",
        "gravel",
        "colorwheel",
        "logo",
        "immunohistochemistry",
        "hubble_deep_field",
    ):
        pixels = np.asarray(getattr(skimage.data, name)())
        if pixels.dtype != np.uint8:  # boolean or float images
            values = pixels.astype(float)
            pixels = (255 * (values - values.min()) / max(np.ptp(values), 1e-9)).astype(np.uint8)
        pictures[name] = Image.fromarray(pixels).convert("RGB")
    return pictures


def test_held_out_generated_images_reach_one_about_one_time_in_a_hundred(
    loaded: mlflow.pyfunc.PyFuncModel, trained_model: TrainedModel
) -> None:
    """Fresh images of the training generator (a seed never used for fitting)."""
    images, _ = render_pool(60, 256, seed=2024)
    out = loaded.predict(pd.DataFrame({"image": _encoded(images)}))
    scores = out["ood_score"].to_numpy(float)
    assert np.isfinite(scores).all() and len(scores) == 240
    share = (scores >= OOD_THRESHOLD).mean()
    assert share <= 0.05, np.sort(scores)[-15:]
    assert abs(np.median(scores)) < 0.5  # typical images sit near the validation median (0)
    flagged = out["warning"].fillna("").str.contains(OOD_WARNING, regex=False).to_numpy()
    np.testing.assert_array_equal(flagged, scores >= OOD_THRESHOLD)
    # The reference profile (the validation split) has the score, normalised on itself.
    profile = pd.read_parquet(trained_model.model_dir / "artifacts" / "reference_profile.parquet")
    assert np.percentile(profile["ood_score"], 99) == pytest.approx(1.0, abs=1e-3)
    assert np.median(profile["ood_score"]) == pytest.approx(0.0, abs=1e-3)


def test_clearly_foreign_pictures_score_above_one_with_a_warning(
    loaded: mlflow.pyfunc.PyFuncModel,
) -> None:
    pictures = _natural_and_synthetic_foreign_pictures()
    out = loaded.predict(pd.DataFrame({"image": _encoded(list(pictures.values()))}))
    scores = dict(zip(pictures, out["ood_score"].to_numpy(float), strict=True))
    above = [name for name, score in scores.items() if score >= OOD_THRESHOLD]
    assert len(above) >= 0.8 * len(pictures), scores
    for name in above:
        row = out.iloc[list(pictures).index(name)]
        assert row["predicted_class"] is not None  # scored, with a caution
        assert OOD_WARNING in row["warning"]
    # Foreign pictures lie far beyond the training data, not at its edge.
    assert np.median(list(scores.values())) >= 5.0, scores


def test_a_model_stored_without_ood_statistics_serves_with_null(
    trained_model: TrainedModel, loaded: mlflow.pyfunc.PyFuncModel, tmp_path: Path
) -> None:
    """A model trained before the score: same network, same answers, ood_score null."""
    old = Path(shutil.copytree(trained_model.model_dir, tmp_path / "old-model"))
    config_path = old / "artifacts" / "config.json"
    config = json.loads(config_path.read_text())
    del config["ood"]
    config_path.write_text(json.dumps(config))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("EYE_MODEL_FUNDUS_CHECK", "off")
        model = mlflow.pyfunc.load_model(str(old))
    noise = Image.fromarray(np.random.default_rng(5).integers(0, 256, (128, 128, 3), np.uint8))
    images, _ = render_pool(2, 256, seed=77)
    frame = pd.DataFrame({"image": _encoded([*images, noise])})
    before, after = loaded.predict(frame), model.predict(frame)
    assert after["ood_score"].isna().all()
    assert after["warning"].isna().all()
    assert after["error"].isna().all()
    assert before["ood_score"].notna().all()
    assert before["ood_score"].iloc[-1] >= OOD_THRESHOLD  # the noise, for the new model
    columns = ["predicted_class", "confidence", "prob_normal"]
    pd.testing.assert_frame_equal(before[columns], after[columns])

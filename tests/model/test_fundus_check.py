"""The fundus check: non-fundus pictures refused, real and generated fundus photographs passed.

The real photograph is scikit-image's ``retina.jpg``; the pictures are decoded exactly as the
model decodes them (:func:`eye_model.preprocess.decode_image`), at the sizes the models of
these tests and the default model use, and checked as one batch, as ``predict`` does.
"""

from __future__ import annotations

import io
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from eye_model.config import CLASS_NAMES
from eye_model.fundus import PASS, REASONS, check_fundus
from eye_model.preprocess import decode_image
from eye_model.settings import SettingsError, load_settings
from eye_model.synthetic import draw_fundus, make_image_rng, sample_fundus_params
from eye_model.telemetry import ModelIdentity, build_records
from tests.conftest import TINY_IMAGE_SIZE
from tests.fundus_images import fundus_lookalikes, non_fundus_corpus, retina, retina_variants
from tests.helpers import b64, draw_fundus_like, encode

#: Network input sizes: the tests' tiny and trained models, and the default model.
SIZES = (TINY_IMAGE_SIZE, 96, 224)


def _jpeg(image: Image.Image, quality: int = 92) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def _check(images: dict[str, Image.Image], size: int) -> dict[str, str]:
    """``fundus_check`` of each picture, sent as a JPEG and decoded as the model does."""
    pixels = np.stack([decode_image(_jpeg(image), size).pixels for image in images.values()])
    return dict(zip(images, check_fundus(pixels), strict=True))


@pytest.fixture(scope="module")
def corpus() -> dict[str, Image.Image]:
    return non_fundus_corpus()


@pytest.mark.parametrize("size", SIZES)
def test_non_fundus_pictures_are_refused(corpus: dict[str, Image.Image], size: int) -> None:
    assert len(corpus) >= 40
    verdicts = _check(corpus, size)
    passed = sorted(name for name, verdict in verdicts.items() if verdict == PASS)
    refused = 1 - len(passed) / len(verdicts)
    print(f"{size} px: {refused:.1%} of {len(verdicts)} non-fundus refused; passed {passed}")
    assert refused >= 0.95, passed
    assert set(verdicts.values()) <= {PASS, *REASONS}
    # Each kind of failure is named for what it is.
    assert verdicts["solid_black"] == "too_dark"
    assert verdicts["retina_black_out"] == "too_dark"
    assert verdicts["retina_greyscale"] == "not_colour_fundus"
    assert verdicts["retina_red_free_green"] == "not_colour_fundus"
    for name in ("document", "screenshot_light", "skimage_chelsea", "solid_fundus_orange"):
        assert verdicts[name] == "no_fundus_field", name


def test_fundus_lookalikes_without_detail_or_colour_are_refused() -> None:
    """Fundus-shaped pictures: the flat or non-red ones are refused, and the figure is shown.

    A round crop of a red-brown photo (a ginger cat, a cup of coffee) has a fundus's shape
    and colour; the check, which reads no content, lets it through (see the README).
    """
    verdicts = _check(fundus_lookalikes(), 224)
    refused = sum(verdict != PASS for verdict in verdicts.values())
    print(f"look-alikes: {refused} of {len(verdicts)} refused: {verdicts}")
    assert verdicts["drawn_disc_orange"] == "too_blurred"
    assert verdicts["retina_as_flat_disc"] == "too_blurred"
    assert verdicts["drawn_disc_white"] == "not_colour_fundus"
    assert verdicts["round_crop_astronaut"] == "not_colour_fundus"
    assert verdicts["round_crop_rocket"] == "not_colour_fundus"
    assert refused >= 5


@pytest.mark.parametrize("size", SIZES)
def test_real_fundus_photograph_and_its_benign_variants_pass(size: int) -> None:
    variants = retina_variants()
    assert len(variants) >= 20
    verdicts = _check(variants, size)
    assert {name: v for name, v in verdicts.items() if v != PASS} == {}


def test_real_fundus_photograph_passes_in_every_format_it_may_come_in() -> None:
    """PNG, JPEG at quality 60, a large 16:9 frame: the check sees the decoded picture."""
    photo = retina()
    wide = Image.new("RGB", (2560, 1440))
    wide.paste(photo.resize((1400, 1400)), (580, 20))
    values = [encode(photo, "PNG"), _jpeg(photo, 60), _jpeg(wide), encode(photo, "WEBP")]
    pixels = np.stack([decode_image(value, 224).pixels for value in values])
    assert check_fundus(pixels) == [PASS] * len(values)


@pytest.mark.parametrize(("generated_size", "size"), [(96, 96), (224, 224), (512, 224), (64, 64)])
def test_generated_fundus_images_all_pass(generated_size: int, size: int) -> None:
    """The training set and the quickstart's samples are scored through the pyfunc."""
    per_class = 40 if generated_size <= 224 else 12
    params = [
        sample_fundus_params(label, make_image_rng(5, c, i), generated_size)
        for c, label in enumerate(CLASS_NAMES)
        for i in range(per_class)
    ]
    pixels = [decode_image(_jpeg(draw_fundus(p)), size).pixels for p in params]
    verdicts = check_fundus(np.stack(pixels))
    assert len(verdicts) == per_class * len(CLASS_NAMES)
    assert [v for v in verdicts if v != PASS] == []


def test_the_tests_fundus_like_pictures_pass() -> None:
    """Other tests score ``draw_fundus_like`` pictures and expect a class."""
    for size in SIZES:
        pixels = np.stack(
            [decode_image(_jpeg(draw_fundus_like(120, seed=i)), size).pixels for i in range(12)]
        )
        assert check_fundus(pixels) == [PASS] * 12


def test_an_empty_batch_has_no_verdicts() -> None:
    assert check_fundus(np.zeros((0, 64, 64, 3), np.uint8)) == []


# -- the modes, over a real pyfunc model ---------------------------------------------------------


def _request() -> pd.DataFrame:
    """A fundus picture, a document, a grey fundus and another fundus picture."""
    corpus = non_fundus_corpus()
    images = [
        draw_fundus_like(160, seed=1),
        corpus["document"],
        corpus["retina_greyscale"],
        draw_fundus_like(160, seed=2),
    ]
    return pd.DataFrame(
        {"image": [b64(_jpeg(image)) for image in images], "image_id": ["a", "b", "c", "d"]}
    )


def _load(tiny_model_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str | None):
    if mode is None:
        monkeypatch.delenv("EYE_MODEL_FUNDUS_CHECK", raising=False)
    else:
        monkeypatch.setenv("EYE_MODEL_FUNDUS_CHECK", mode)
    return mlflow.pyfunc.load_model(str(tiny_model_path))


def test_refuse_is_the_default_and_refused_rows_never_fail_the_others(
    tiny_model_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = _load(tiny_model_path, monkeypatch, None).predict(_request())
    rows = out.to_dict("records")
    assert out["fundus_check"].tolist() == ["pass", "no_fundus_field", "not_colour_fundus", "pass"]
    for row in (rows[0], rows[3]):
        assert row["predicted_class"] in CLASS_NAMES
        assert row["error"] is None and row["warning"] is None
    for row, reason in ((rows[1], "no_fundus_field"), (rows[2], "not_colour_fundus")):
        assert row["predicted_class"] is None
        assert row["confidence"] is None and row["prob_normal"] is None
        assert row["error"].startswith("not a gradable fundus photograph: ")
        assert REASONS[reason] in row["error"]
        assert "send a colour fundus photograph" in row["error"]
        assert "EYE_MODEL_FUNDUS_CHECK=warn" in row["error"]


def test_warn_scores_every_row_and_warns_about_the_failing_ones(
    tiny_model_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = _load(tiny_model_path, monkeypatch, "warn").predict(_request())
    assert out["fundus_check"].tolist() == ["pass", "no_fundus_field", "not_colour_fundus", "pass"]
    assert out["error"].isna().all()
    assert out["predicted_class"].isin(CLASS_NAMES).all()
    warnings = out["warning"].tolist()
    assert warnings[0] is None and warnings[3] is None
    assert "no_fundus_field" in warnings[1] and "not_colour_fundus" in warnings[2]
    assert all("not be a gradable fundus photograph" in w for w in warnings[1:3])


def test_off_checks_nothing(tiny_model_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = _load(tiny_model_path, monkeypatch, "off").predict(_request())
    assert out["fundus_check"].isna().all()
    assert out["warning"].isna().all() and out["error"].isna().all()
    assert out["predicted_class"].isin(CLASS_NAMES).all()


def test_a_bad_mode_names_the_setting_and_the_choices() -> None:
    with pytest.raises(SettingsError, match=r"EYE_MODEL_FUNDUS_CHECK='maybe'.*refuse, warn, off"):
        load_settings({"EYE_MODEL_FUNDUS_CHECK": "maybe"})
    assert load_settings({"EYE_MODEL_FUNDUS_CHECK": "WARN"}).fundus_check == "warn"
    assert load_settings({}).fundus_check == "refuse"


def test_telemetry_records_keep_the_check_of_refused_and_scored_rows(
    tiny_model_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = _load(tiny_model_path, monkeypatch, "refuse").unwrap_python_model()
    rows = model.score_images(_request()["image"].tolist())
    records = build_records(rows, request_id="r", identity=ModelIdentity())
    assert [r["status"] for r in records] == ["ok", "error", "error", "ok"]
    assert [r["fundus_check"] for r in records] == [
        "pass",
        "no_fundus_field",
        "not_colour_fundus",
        "pass",
    ]
    assert records[1]["predicted_class"] is None and "prob_normal" not in records[1]
    assert records[1]["error"].startswith("not a gradable fundus photograph")

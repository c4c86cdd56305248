"""Data expectations of the synthetic fundus generator.

The class-sign tests measure the written JPEGs (20 per class at 256 px), so
they check what training actually reads, not only the parameters.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from eye_model.config import CLASS_NAMES
from eye_model.synthetic import (
    CATARACT_BLUR_FRACTION,
    JPEG_QUALITY_RANGE,
    RESOLUTION_RANGE,
    SHARP_BLUR_FRACTION,
    FieldShape,
    FundusParams,
    LensArtefacts,
    draw_fundus,
    generate_dataset,
    make_image_rng,
    render_fundus,
    sample_fundus_params,
)

SIGN_SEED = 11
SIGN_PER_CLASS = 20
SIGN_SIZE = 256


@dataclass(frozen=True)
class Sample:
    """One written image with the parameters it was drawn from."""

    params: FundusParams
    pixels: np.ndarray  # (n, n, 3) float32, 0-255

    def field(self, fraction: float = 0.9) -> np.ndarray:
        """Mask of the pixels within ``fraction`` of the field radius."""
        return (
            self.distance_from(self.params.field_centre_px) < fraction * self.params.field_radius_px
        )

    def distance_from(self, centre: tuple[float, float]) -> np.ndarray:
        """Distance of every pixel centre from ``centre`` (x, y), in pixels."""
        n = self.pixels.shape[0]
        coords = np.arange(n) + 0.5
        return np.hypot(coords[None, :] - centre[0], coords[:, None] - centre[1])


def list_jpegs(folder: Path) -> list[Path]:
    """The JPEG files of a folder, sorted by name."""
    return sorted(folder.glob("*.jpg"))


@pytest.fixture(scope="module")
def samples(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Sample]]:
    """20 written images per class at 256 px, with their parameters."""
    root = tmp_path_factory.mktemp("synthetic")
    generate_dataset(
        root, per_class=SIGN_PER_CLASS, image_size=SIGN_SIZE, seed=SIGN_SEED, progress=False
    )
    result: dict[str, list[Sample]] = {}
    for class_index, label in enumerate(CLASS_NAMES):
        rows = []
        for index, path in enumerate(list_jpegs(root / label)):
            params = sample_fundus_params(
                label, make_image_rng(SIGN_SEED, class_index, index), SIGN_SIZE
            )
            with Image.open(path) as image:
                rows.append(Sample(params, np.asarray(image.convert("RGB"), dtype=np.float32)))
        result[label] = rows
    return result


def sharpness(sample: Sample) -> float:
    """Variance of the Laplacian of the grey image inside the field."""
    grey = sample.pixels.mean(axis=2)
    return float(ndimage.laplace(grey)[sample.field()].var())


# --------------------------------------------------------------------------
# files, layout, determinism


def test_same_seed_gives_byte_identical_files_and_another_seed_differs(tmp_path: Path) -> None:
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        generate_dataset(tmp_path / name, per_class=2, image_size=64, seed=seed, progress=False)
    for label in CLASS_NAMES:
        first = [p.read_bytes() for p in list_jpegs(tmp_path / "a" / label)]
        again = [p.read_bytes() for p in list_jpegs(tmp_path / "b" / label)]
        other = [p.read_bytes() for p in list_jpegs(tmp_path / "c" / label)]
        assert first == again
        assert all(x != y for x, y in zip(first, other, strict=True))


def test_each_image_depends_only_on_seed_class_and_index(tmp_path: Path) -> None:
    generate_dataset(tmp_path / "two", per_class=2, image_size=64, seed=5, progress=False)
    generate_dataset(tmp_path / "three", per_class=3, image_size=64, seed=5, progress=False)
    for label in CLASS_NAMES:
        two = [p.read_bytes() for p in list_jpegs(tmp_path / "two" / label)]
        three = [p.read_bytes() for p in list_jpegs(tmp_path / "three" / label)]
        assert three[:2] == two
    # The class index, not only the seed, feeds each image's generator.
    normal = np.asarray(Image.open(tmp_path / "two" / "normal" / "normal_00000.jpg"))
    glaucoma = np.asarray(Image.open(tmp_path / "two" / "glaucoma" / "glaucoma_00000.jpg"))
    assert np.abs(normal.astype(int) - glaucoma.astype(int)).mean() > 5


def test_dataset_has_imagefolder_layout_of_readable_rgb_jpegs(tmp_path: Path) -> None:
    counts = generate_dataset(tmp_path, per_class=3, image_size=96, seed=0, progress=False)

    assert counts == dict.fromkeys(CLASS_NAMES, 3)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(CLASS_NAMES)
    for label in CLASS_NAMES:
        files = list_jpegs(tmp_path / label)
        assert [p.name for p in files] == [f"{label}_{i:05d}.jpg" for i in range(3)]
        for path in files:
            with Image.open(path) as image:
                assert image.format == "JPEG"
                assert image.mode == "RGB"
                assert image.size == (96, 96)


def test_smaller_rerun_leaves_exactly_per_class_files(tmp_path: Path) -> None:
    generate_dataset(tmp_path, per_class=3, image_size=48, seed=0, progress=False)
    counts = generate_dataset(tmp_path, per_class=1, image_size=48, seed=0, progress=False)

    assert counts == dict.fromkeys(CLASS_NAMES, 1)
    for label in CLASS_NAMES:
        assert [p.name for p in list_jpegs(tmp_path / label)] == [f"{label}_00000.jpg"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"per_class": -1}, "per_class=-1"),
        ({"per_class": 1, "seed": -2}, "seed=-2"),
        ({"per_class": 1, "image_size": 8}, "image_size=8"),
    ],
)
def test_generate_dataset_rejects_bad_arguments(tmp_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        generate_dataset(tmp_path, progress=False, **kwargs)


def test_render_fundus_returns_square_rgb_and_rejects_unknown_labels() -> None:
    image = render_fundus("normal", np.random.default_rng(0), image_size=80)
    assert image.mode == "RGB"
    assert image.size == (80, 80)
    with pytest.raises(ValueError, match="diabetic_retinopathy"):
        render_fundus("retinitis", np.random.default_rng(0), image_size=80)


def test_draw_fundus_is_a_pure_function_of_its_params() -> None:
    params = sample_fundus_params("diabetic_retinopathy", np.random.default_rng(1), image_size=96)
    assert np.array_equal(np.asarray(draw_fundus(params)), np.asarray(draw_fundus(params)))


def test_jpeg_quality_varies_within_camera_range() -> None:
    qualities = [
        sample_fundus_params(label, make_image_rng(0, ci, i), 64).jpeg_quality
        for ci, label in enumerate(CLASS_NAMES)
        for i in range(10)
    ]
    assert min(qualities) >= JPEG_QUALITY_RANGE[0]
    assert max(qualities) <= JPEG_QUALITY_RANGE[1]
    assert len(set(qualities)) >= 8


# --------------------------------------------------------------------------
# what every image looks like


def test_surround_is_dark_in_every_image(samples: dict[str, list[Sample]]) -> None:
    corner = int(0.06 * SIGN_SIZE)
    for label, rows in samples.items():
        for sample in rows:
            p = sample.pixels
            corners = [
                p[:corner, :corner],
                p[:corner, -corner:],
                p[-corner:, :corner],
                p[-corner:, -corner:],
            ]
            assert max(float(c.mean()) for c in corners) < 25, label


def test_field_is_red_dominant_in_every_image(samples: dict[str, list[Sample]]) -> None:
    for label, rows in samples.items():
        for sample in rows:
            red, green, blue = sample.pixels[sample.field()].mean(axis=0)
            assert red > 1.15 * max(green, blue), (label, red, green, blue)


def test_global_colour_overlaps_across_non_cataract_classes(
    samples: dict[str, list[Sample]],
) -> None:
    def field_means(label: str) -> np.ndarray:
        return np.array([s.pixels[s.field()].mean(axis=0) for s in samples[label]])

    normal = field_means("normal")
    for label in ("diabetic_retinopathy", "glaucoma"):
        other = field_means(label)
        spread = np.sqrt((normal.var(axis=0) + other.var(axis=0)) / 2)
        # Class means closer than one within-class standard deviation per channel.
        assert np.all(np.abs(normal.mean(axis=0) - other.mean(axis=0)) < spread), label


# --------------------------------------------------------------------------
# class signs


def test_cataract_is_blurrier_than_every_other_class(samples: dict[str, list[Sample]]) -> None:
    scores = {label: [sharpness(s) for s in rows] for label, rows in samples.items()}
    cataract = np.array(scores.pop("cataract"))
    for label, values in scores.items():
        assert cataract.mean() < 0.2 * np.mean(values), label
        # Not only on average: the sharpest cataract is blurrier than the blurriest other image.
        assert cataract.max() < min(values), label


def test_only_cataract_images_are_blurred(samples: dict[str, list[Sample]]) -> None:
    for label, rows in samples.items():
        for sample in rows:
            blur = sample.params.blur_sigma_px / SIGN_SIZE
            if label == "cataract":
                assert blur >= 0.9 * CATARACT_BLUR_FRACTION[0]
            else:
                assert blur <= SHARP_BLUR_FRACTION


def test_cup_to_disc_ratio_separates_glaucoma(samples: dict[str, list[Sample]]) -> None:
    for label, rows in samples.items():
        ratios = [s.params.cup_to_disc for s in rows]
        if label == "glaucoma":
            assert min(ratios) >= 0.6
            assert max(ratios) <= 0.9
        else:
            assert max(ratios) < 0.5, label


def test_glaucoma_discs_are_paler(samples: dict[str, list[Sample]]) -> None:
    def disc_green_to_red(sample: Sample) -> float:
        disc = (
            sample.distance_from(sample.params.disc_centre_px) < 0.8 * sample.params.disc_radius_px
        )
        red, green, _ = sample.pixels[disc].mean(axis=0)
        return float(green / red)

    pallor = {
        label: np.mean([disc_green_to_red(s) for s in rows]) for label, rows in samples.items()
    }
    for label in ("diabetic_retinopathy", "normal"):
        assert pallor["glaucoma"] > pallor[label] + 0.1, pallor


def lesion_pixel_fractions(sample: Sample) -> tuple[float, float]:
    """Shares of retina (away from the disc) that are bright-yellow and dark spots.

    Pixels are compared with a local median of the green channel, so exposure
    and colour temperature cancel out.
    """
    red, green, blue = (sample.pixels[..., c] for c in range(3))
    # Local median (robust to vessels and spots), computed on a 4x smaller copy for speed.
    small = green.reshape(SIGN_SIZE // 4, 4, SIGN_SIZE // 4, 4).mean(axis=(1, 3))
    background = np.kron(ndimage.median_filter(small, size=5), np.ones((4, 4)))
    away = sample.field() & (
        sample.distance_from(sample.params.disc_centre_px) > 2 * sample.params.disc_radius_px
    )
    yellow = (
        (green - background > 20) & (red > green) & (green > blue) & (green > 0.65 * red) & away
    )
    dark = (background - green > 15) & away
    return float(yellow.sum() / away.sum()), float(dark.sum() / away.sum())


def test_diabetic_retinopathy_has_more_yellow_and_dark_spots_than_normal(
    samples: dict[str, list[Sample]],
) -> None:
    dr = np.array([lesion_pixel_fractions(s) for s in samples["diabetic_retinopathy"]])
    normal = np.array([lesion_pixel_fractions(s) for s in samples["normal"]])

    # Exudates: ~1 % of the retina in DR, next to nothing in normal eyes.
    assert dr[:, 0].mean() > 0.003
    assert dr[:, 0].mean() > 5 * normal[:, 0].mean()
    # Microaneurysms and haemorrhages on top of the vessels both classes have.
    assert dr[:, 1].mean() > 1.2 * normal[:, 1].mean()
    for sample in samples["diabetic_retinopathy"]:
        counts = sample.params.lesion_counts
        assert counts["microaneurysm"] >= 4
        assert counts["haemorrhage"] >= 1
    for label in ("cataract", "glaucoma", "normal"):
        assert all(not s.params.lesions for s in samples[label]), label


@pytest.mark.parametrize("image_size", [256, 512])
def test_lesions_stay_visible_at_network_input_size(image_size: int) -> None:
    params = sample_fundus_params(
        "diabetic_retinopathy", np.random.default_rng(2), image_size, severity=1.0
    )
    diameters = [
        2 * lesion.radius * params.field_radius_px / image_size
        for lesion in params.lesions
        if lesion.kind == "microaneurysm"
    ]
    # 0.4-0.8 % of the image, as in a 1,500 px photograph (6-12 px): 0.9-1.8 px at 224 px.
    assert min(diameters) >= 0.004
    assert max(diameters) <= 0.008


def test_severity_grades_each_class_sign() -> None:
    def mean_of(label: str, severity: float, measure) -> float:
        return float(
            np.mean(
                [
                    measure(sample_fundus_params(label, np.random.default_rng(i), 128, severity))
                    for i in range(6)
                ]
            )
        )

    assert (
        mean_of("glaucoma", 0.3, lambda p: p.cup_to_disc)
        < mean_of("glaucoma", 1.0, lambda p: p.cup_to_disc) - 0.2
    )
    assert mean_of("cataract", 0.3, lambda p: p.blur_sigma_px) * 2 < mean_of(
        "cataract", 1.0, lambda p: p.blur_sigma_px
    )
    assert mean_of("diabetic_retinopathy", 0.3, lambda p: len(p.lesions)) * 2 < mean_of(
        "diabetic_retinopathy", 1.0, lambda p: len(p.lesions)
    )


# --------------------------------------------------------------------------
# domain randomisation: what real cameras vary, drawn alike for every class


def camera_draws(count: int = 40) -> list[FundusParams]:
    """Parameters of ``count`` images per class at 64 px (cheap: nothing is painted)."""
    return [
        sample_fundus_params(label, make_image_rng(0, ci, i), 64)
        for ci, label in enumerate(CLASS_NAMES)
        for i in range(count)
    ]


def test_camera_variation_spans_field_shapes_artefacts_resolution_and_jpeg() -> None:
    draws = camera_draws()
    shares = {
        "chord": np.mean([p.field_shape.chord_top < 1.0 for p in draws]),
        "notch": np.mean([p.field_shape.notch_size > 0 for p in draws]),
        "overflowing field": np.mean([p.field_radius_px > 32 for p in draws]),
        "dust": np.mean([any(s.strength < 0 for s in p.lens_artefacts.specks) for p in draws]),
        "reflection": np.mean([p.lens_artefacts.central_reflex > 0 for p in draws]),
        "low resolution": np.mean([p.resolution < 1.0 for p in draws]),
        "JPEG below 60": np.mean([p.jpeg_quality < 60 for p in draws]),
    }
    for name, share in shares.items():
        assert 0.1 < share < 0.7, (name, share)
    assert min(p.resolution for p in draws) >= RESOLUTION_RANGE[0]


def test_camera_variation_does_not_depend_on_the_class() -> None:
    draws = camera_draws(60)
    by_class = {
        label: np.array(
            [
                [p.jpeg_quality / 100, p.resolution, p.vignetting, p.exposure, p.vessel_redness]
                + list(p.fundus_colour)
                for p in draws
                if p.label == label
            ]
        )
        for label in CLASS_NAMES
    }
    pooled_std = np.concatenate(list(by_class.values())).std(axis=0)
    for label, values in by_class.items():
        # Class means within 0.4 pooled standard deviations (60 draws: ~0.13 std error).
        assert np.all(
            np.abs(values.mean(axis=0) - np.concatenate(list(by_class.values())).mean(axis=0))
            < 0.4 * pooled_std
        ), label


def test_dust_is_fainter_than_any_haemorrhage() -> None:
    strengths = [s.strength for p in camera_draws() for s in p.lens_artefacts.specks]
    assert strengths, "no specks drawn"
    # A haemorrhage lets through 16-45 % of the light; dust dims by at most 18 %.
    assert min(strengths) >= -0.18


def test_field_stop_cuts_chords_and_notches_out_of_the_field() -> None:
    base = sample_fundus_params("normal", np.random.default_rng(4), 256)
    shape = FieldShape(chord_top=0.85, chord_bottom=0.85, notch_angle=0.0, notch_size=0.05)
    params = replace(base, field_shape=shape, rotation_deg=0.0, lens_artefacts=LensArtefacts())
    pixels = np.asarray(draw_fundus(params), dtype=np.float32).mean(axis=2)
    cx, cy = params.field_centre_px
    radius = params.field_radius_px
    # Inside the circle but above the top chord: dark surround.
    assert pixels[int(cy - 0.93 * radius), int(cx)] < 20
    assert pixels[int(cy - 0.75 * radius), int(cx)] > 40
    # The notch at angle 0 (right-hand rim) is dark, the rim beside it is not.
    assert pixels[int(cy), int(cx + 0.97 * radius)] < 20
    assert pixels[int(cy + 0.25 * radius), int(cx + 0.93 * radius)] > 25


def test_a_lower_camera_resolution_loses_fine_detail() -> None:
    base = sample_fundus_params("normal", np.random.default_rng(6), 256)
    sharp = replace(base, resolution=1.0, blur_sigma_px=0.0)

    def detail(params: FundusParams) -> float:
        grey = np.asarray(draw_fundus(params), dtype=np.float32).mean(axis=2)
        return float(ndimage.laplace(grey)[64:192, 64:192].var())

    assert detail(replace(sharp, resolution=0.5)) < 0.5 * detail(sharp)


def test_the_real_retina_photo_lies_inside_the_generated_colour_range(
    samples: dict[str, list[Sample]],
) -> None:
    skimage_data = pytest.importorskip("skimage.data")
    real = np.asarray(skimage_data.retina(), dtype=np.float32)
    real_mean = real[real.mean(axis=2) > 20].mean(axis=0)
    generated = np.array(
        [s.pixels[s.field()].mean(axis=0) for rows in samples.values() for s in rows]
    )
    # One anchor among many: inside the generated spread, not at its centre by construction.
    low, high = np.percentile(generated, [5, 95], axis=0)
    assert np.all(real_mean > low) and np.all(real_mean < high), (real_mean, low, high)
    assert np.all(high - low > 40), "the generated colours should spread widely"


def test_cataract_loses_contrast(samples: dict[str, list[Sample]]) -> None:
    def contrast(sample: Sample) -> float:
        green = sample.pixels[..., 1][sample.field(0.8)]
        return float(green.std() / max(green.mean(), 1.0))

    scores = {label: np.mean([contrast(s) for s in rows]) for label, rows in samples.items()}
    for label in ("diabetic_retinopathy", "glaucoma", "normal"):
        assert scores["cataract"] < 0.7 * scores[label], scores

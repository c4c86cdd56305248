"""Score the real fundus photographs available offline, and benign variants of them.

scikit-image ships two: ``retina.jpg`` (a healthy eye, 1411 x 1411) and
``microaneurysms.png`` (a 102 x 102 greyscale crop with diabetic-retinopathy
lesions). The report scores retina.jpg, its variants (rotations, flips, ±15 %
brightness, JPEG quality 60, crops to the field) and the microaneurysm crop
colourised and upscaled into a round fundus field, and prints for each the
class, the confidence and, when the model has them, ``ood_score`` and
``fundus_check``. A model trained on generated images should call the healthy eye
``normal``, or at least not be confidently wrong about it.

Usage:
    python scripts/real_photo_report.py --model-uri runs:/<run_id>/model
    python scripts/real_photo_report.py            # trains the default recipe first
    python scripts/real_photo_report.py --model-uri ... --json report.json
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageOps

try:
    import skimage.data as skimage_data
except ModuleNotFoundError:  # pragma: no cover - a clear line instead of a traceback
    raise SystemExit("scikit-image is missing: pip install -e '.[dev]'") from None

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

EXPECTED = {"retina": "normal", "microaneurysms": "diabetic_retinopathy"}
REPORT_COLUMNS = ("predicted_class", "confidence", "ood_score", "fundus_check", "warning", "error")


def field_box(image: Image.Image, threshold: int = 20) -> tuple[int, int, int, int]:
    """Bounding box (left, top, right, bottom) of the bright field on its dark surround."""
    grey = np.asarray(image.convert("L"))
    rows = np.flatnonzero((grey > threshold).any(axis=1))
    cols = np.flatnonzero((grey > threshold).any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def jpeg(image: Image.Image, quality: int) -> Image.Image:
    """The image after a JPEG round trip at ``quality``."""
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")


def brightness(image: Image.Image, factor: float) -> Image.Image:
    """All pixel values times ``factor`` (clipped to 0-255)."""
    pixels = np.asarray(image, dtype=np.float32) * factor
    return Image.fromarray(np.clip(pixels + 0.5, 0, 255).astype(np.uint8))


def retina_variants(retina: Image.Image) -> dict[str, Image.Image]:
    """retina.jpg and the benign variants a clinic's photographs go through."""
    left, top, right, bottom = field_box(retina)
    width, height = right - left, bottom - top
    return {
        "retina": retina,
        "retina rot90": retina.rotate(90),
        "retina rot180": retina.rotate(180),
        "retina rot270": retina.rotate(270),
        "retina rot15": retina.rotate(15, resample=Image.Resampling.BICUBIC),
        "retina flip-lr (other eye)": ImageOps.mirror(retina),
        "retina flip-ud": ImageOps.flip(retina),
        "retina brightness +15%": brightness(retina, 1.15),
        "retina brightness -15%": brightness(retina, 0.85),
        "retina JPEG 60": jpeg(retina, 60),
        "retina crop to field": retina.crop((left, top, right, bottom)),
        "retina crop top-bottom 10%": retina.crop(
            (left, top + height // 10, right, bottom - height // 10)
        ),
        "retina crop centre 80%": retina.crop(
            (left + width // 10, top + height // 10, right - width // 10, bottom - height // 10)
        ),
        "retina 512 px": retina.resize((512, 512), Image.Resampling.LANCZOS),
    }


def microaneurysms_in_field(side: int = 1024) -> Image.Image:
    """The microaneurysm crop, colourised as a fundus and upscaled into a round field.

    The crop is a greyscale (green-channel-like) patch; its grey levels are mapped onto
    fundus red, orange and dark-red, then it is upscaled to fill a round field on a dark
    surround, as a fundus camera frames the retina.
    """
    crop = np.asarray(skimage_data.microaneurysms(), dtype=np.float32)
    level = (crop - crop.min()) / max(float(np.ptp(crop)), 1.0)
    colour = np.stack([0.55 + 0.35 * level, 0.12 + 0.30 * level, 0.06 + 0.17 * level], axis=-1)
    patch = Image.fromarray((colour * 255).astype(np.uint8)).resize(
        (side, side), Image.Resampling.BICUBIC
    )
    yy, xx = np.mgrid[:side, :side] + 0.5
    inside = np.hypot(xx - side / 2, yy - side / 2) < 0.47 * side
    pixels = np.asarray(patch).copy()
    pixels[~inside] = 3
    return Image.fromarray(pixels)


def report_images() -> dict[str, Image.Image]:
    """Every image the report scores, by name."""
    images = retina_variants(Image.fromarray(skimage_data.retina()).convert("RGB"))
    images["microaneurysms in a fundus field"] = microaneurysms_in_field()
    return images


def encode(image: Image.Image) -> str:
    """Base64 of the image as a PNG file (lossless, so variants are what they say)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def score_report(model_uri: str) -> pd.DataFrame:
    """Score every report image with the model at ``model_uri``; one row per image."""
    import mlflow

    images = report_images()
    model = mlflow.pyfunc.load_model(model_uri)
    frame = pd.DataFrame({"image": [encode(image) for image in images.values()]})
    scored = model.predict(frame).reset_index(drop=True)
    result = pd.DataFrame({"image": list(images)})
    for column in REPORT_COLUMNS:
        result[column] = scored.get(column)
    result["expected"] = [EXPECTED[name.split()[0]] for name in images]
    return result


def train_default_model() -> str:
    """Train with the default recipe (``eye-model train`` defaults); returns the model URI."""
    from eye_model.train import TrainConfig, run_training

    return run_training(TrainConfig()).model_uri


def format_report(report: pd.DataFrame) -> str:
    """A fixed-width table of the report, and a one-line summary."""
    lines = [f"{'image':34} {'class':22} {'conf':>5} {'ood':>6}  fundus_check / warning / error"]
    for row in report.itertuples(index=False):
        ood = "-" if pd.isna(row.ood_score) else f"{float(row.ood_score):.2f}"
        confidence = "-" if pd.isna(row.confidence) else f"{float(row.confidence):.2f}"
        notes = " / ".join(
            str(v) for v in (row.fundus_check, row.warning, row.error) if isinstance(v, str) and v
        )
        lines.append(
            f"{row.image:34} {row.predicted_class or '-':22} {confidence:>5} {ood:>6}  {notes}"
        )
    wrong = report[
        report["predicted_class"].notna() & (report["predicted_class"] != report["expected"])
    ]
    confident_wrong = wrong[wrong["confidence"].astype(float) >= 0.9]
    lines.append(
        f"{len(report)} images: {len(report) - len(wrong)} as expected, {len(wrong)} other, "
        f"{len(confident_wrong)} other with confidence >= 0.90; "
        f"max confidence when other: "
        + (f"{wrong['confidence'].astype(float).max():.2f}" if len(wrong) else "-")
    )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model-uri", default="", help="model to score with; empty: train the default recipe"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the rows as JSON")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Print the report and return the exit code."""
    args = parse_args(argv)
    model_uri = args.model_uri or train_default_model()
    report = score_report(model_uri)
    print(f"model: {model_uri}")
    print(format_report(report))
    if args.json:
        args.json.write_text(json.dumps(report.to_dict(orient="records"), indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

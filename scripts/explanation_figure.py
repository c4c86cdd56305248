"""Draw docs/explanation.png: generated photographs beside their HiResCAM explanations.

Scores one generated photograph of each disease class with ``{"explain": true}`` through the
pyfunc, and lays out each photo beside its ``heatmap``, captioned with the prediction.

Usage::

    python scripts/explanation_figure.py MODEL_URI [--out docs/explanation.png] [--side 288]
"""

from __future__ import annotations

import argparse
import base64
import io
import sys

CLASSES = ("cataract", "diabetic_retinopathy", "glaucoma")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_uri")
    parser.add_argument("--out", default="docs/explanation.png")
    parser.add_argument("--side", type=int, default=288, help="side of each panel, in pixels")
    parser.add_argument("--seed", type=int, default=5)
    args = parser.parse_args(argv)

    import mlflow
    import pandas as pd
    from PIL import Image, ImageDraw

    from eye_model.config import CLASS_NAMES
    from eye_model.synthetic import draw_fundus, make_image_rng, sample_fundus_params

    photos, encoded = [], []
    for label in CLASSES:
        rng = make_image_rng(args.seed, CLASS_NAMES.index(label), 0)
        photo = draw_fundus(sample_fundus_params(label, rng, 512)).convert("RGB")
        buffer = io.BytesIO()
        photo.save(buffer, "JPEG", quality=92)
        photos.append(photo)
        encoded.append(base64.b64encode(buffer.getvalue()).decode("ascii"))
    model = mlflow.pyfunc.load_model(args.model_uri)
    out = model.predict(
        pd.DataFrame({"image": encoded}), params={"explain": True, "heatmap_size": args.side}
    )
    side, caption = args.side, 40
    sheet = Image.new("RGB", (2 * side + 30, len(CLASSES) * (side + caption) + 10), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (label, photo, row) in enumerate(zip(CLASSES, photos, out.itertuples(), strict=True)):
        top = 10 + i * (side + caption)
        heatmap = Image.open(io.BytesIO(base64.b64decode(row.heatmap))).convert("RGB")
        sheet.paste(photo.resize((side, side)), (10, top))
        sheet.paste(heatmap, (20 + side, top))
        text = (
            f"generated {label}: predicted {row.predicted_class} "
            f"({row.confidence:.2f}); left the photo, right its heatmap"
        )
        draw.text((10, top + side + 8), text, fill="black")
    sheet.save(args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

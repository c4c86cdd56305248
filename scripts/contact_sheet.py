"""Render a contact sheet of synthetic fundus photographs, one row per class.

The images are the ones ``generate_dataset`` writes for the same seed and
size (same per-image seeds), so the sheet previews a dataset.

Usage:
    python scripts/contact_sheet.py --out /tmp/sheet.png --per-class 6 --image-size 256 --seed 0
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

try:
    from eye_model import synthetic
    from eye_model.config import CLASS_NAMES
except ModuleNotFoundError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from eye_model import synthetic
    from eye_model.config import CLASS_NAMES

LABEL_WIDTH = 190
GAP = 4


def render_sheet(
    per_class: int, image_size: int, seed: int, with_severity: bool = True
) -> Image.Image:
    """Render the sheet: a label column, then ``per_class`` images per class row.

    Args:
        per_class: images per row.
        image_size: side of each image, in pixels.
        seed: dataset seed (same images as ``generate_dataset``).
        with_severity: write each image's severity in its corner.

    Returns:
        The RGB contact sheet.
    """
    cell = image_size + GAP
    sheet = Image.new(
        "RGB", (LABEL_WIDTH + per_class * cell, len(CLASS_NAMES) * cell), (40, 40, 40)
    )
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=max(12, image_size // 14))
    small = ImageFont.load_default(size=max(10, image_size // 20))
    for row, label in enumerate(CLASS_NAMES):
        top = row * cell
        draw.text(
            (8, top + image_size // 2), label.replace("_", "\n"), fill=(240, 240, 240), font=font
        )
        for col in range(per_class):
            params = synthetic.sample_fundus_params(
                label, synthetic.make_image_rng(seed, row, col), image_size
            )
            left = LABEL_WIDTH + col * cell
            sheet.paste(synthetic.draw_fundus(params), (left, top))
            if with_severity:
                note = f"s={params.severity:.2f}"
                if label == "glaucoma":
                    note += f" cdr={params.cup_to_disc:.2f}"
                draw.text((left + 3, top + 2), note, fill=(200, 200, 200), font=small)
    return sheet


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, default=Path("contact_sheet.png"), help="PNG file to write"
    )
    parser.add_argument("--per-class", type=int, default=6, help="images per class (row)")
    parser.add_argument("--image-size", type=int, default=256, help="side of each image, pixels")
    parser.add_argument("--seed", type=int, default=0, help="dataset seed")
    parser.add_argument(
        "--no-severity", action="store_true", help="do not write severities on the images"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Write the contact sheet and return the exit code."""
    args = parse_args(argv)
    sheet = render_sheet(
        args.per_class, args.image_size, args.seed, with_severity=not args.no_severity
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(args.out)
    print(f"wrote {args.out} ({sheet.width}x{sheet.height})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

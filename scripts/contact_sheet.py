"""Render a contact sheet of synthetic fundus photographs, one row per class, beside real ones.

The images are the ones ``generate_dataset`` writes for the same seed and
size (same per-image seeds), so the sheet previews a dataset. A last row
(when scikit-image is installed) shows the real photographs available
offline: scikit-image's ``retina.jpg`` (a healthy eye), its
``microaneurysms.png`` crop and, at the same scale, a crop of the same size
from a generated diabetic-retinopathy photograph of 1,500 px (green channel,
as the real crop is), so lesion sizes can be compared.

Usage:
    python scripts/contact_sheet.py --out /tmp/sheet.png --per-class 6 --image-size 256 --seed 0
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps

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


def lesion_crop(seed: int, side: int = 102, photo_size: int = 1500) -> Image.Image:
    """Green channel of a ``side`` px crop round microaneurysms of a generated DR photograph.

    Args:
        seed: seed of the photograph.
        side: crop side, pixels (the real crop is 102 px).
        photo_size: side of the generated photograph, pixels.
    """
    params = synthetic.sample_fundus_params(
        "diabetic_retinopathy", np.random.default_rng(seed), photo_size, severity=0.8
    )
    # A sharp camera at full resolution, as the real crop's was; contrast stretched as it is.
    params = replace(params, resolution=1.0, blur_sigma_px=0.0)
    photo = np.asarray(synthetic.draw_fundus(params))
    aneurysms = [lesion for lesion in params.lesions if lesion.kind == "microaneurysm"]
    centres = params.to_pixels(np.array([lesion.centre for lesion in aneurysms]))
    # The crop with the most microaneurysms in it, as the real one was chosen.
    best = max(
        centres,
        key=lambda c: int((np.abs(centres - c) < side / 2).all(axis=1).sum()),
    )
    x, y = (np.clip(best, side // 2, photo_size - side // 2) - side // 2).astype(int)
    return ImageOps.autocontrast(Image.fromarray(photo[y : y + side, x : x + side, 1]), cutoff=1)


def render_real_row(image_size: int, seed: int) -> Image.Image | None:
    """A row of real photographs and a generated crop at their scale; None without scikit-image."""
    try:
        import skimage.data as skimage_data
    except ModuleNotFoundError:
        return None
    cell = image_size + GAP
    row = Image.new("RGB", (LABEL_WIDTH + 3 * cell, cell), (40, 40, 40))
    draw = ImageDraw.Draw(row)
    font = ImageFont.load_default(size=max(12, image_size // 14))
    small = ImageFont.load_default(size=max(10, image_size // 20))
    draw.text((8, image_size // 2), "real\n(scikit-image)", fill=(240, 240, 240), font=font)
    tiles = [
        ("retina.jpg", Image.fromarray(skimage_data.retina())),
        ("microaneurysms.png", Image.fromarray(skimage_data.microaneurysms())),
        ("generated, same scale", lesion_crop(seed)),
    ]
    for col, (note, tile) in enumerate(tiles):
        left = LABEL_WIDTH + col * cell
        resized = tile.convert("RGB").resize((image_size, image_size), Image.Resampling.BICUBIC)
        row.paste(resized, (left, 0))
        draw.text((left + 3, 2), note, fill=(255, 255, 255), font=small)
    return row


def stack_rows(sheet: Image.Image, row: Image.Image | None) -> Image.Image:
    """The sheet with ``row`` below it (the sheet alone when there is no row)."""
    if row is None:
        return sheet
    both = Image.new("RGB", (max(sheet.width, row.width), sheet.height + row.height), (40, 40, 40))
    both.paste(sheet, (0, 0))
    both.paste(row, (0, sheet.height))
    return both


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
    parser.add_argument(
        "--no-real", action="store_true", help="leave out the row of real photographs"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Write the contact sheet and return the exit code."""
    args = parse_args(argv)
    sheet = render_sheet(
        args.per_class, args.image_size, args.seed, with_severity=not args.no_severity
    )
    if not args.no_real:
        sheet = stack_rows(sheet, render_real_row(args.image_size, args.seed))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(args.out)
    print(f"wrote {args.out} ({sheet.width}x{sheet.height})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

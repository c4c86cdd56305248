"""Real and non-fundus pictures for the fundus check's tests, all made offline.

The real fundus photograph is scikit-image's ``retina.jpg`` (a healthy eye, 1411 px, shipped
in its wheel); the non-fundus corpus is scikit-image's other sample pictures, and documents,
screenshots, solid colours, noise, gradients and round-cropped photos generated here.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageFont


def skimage_data_dir() -> Path:
    """The folder of scikit-image's bundled sample pictures."""
    import skimage

    return Path(skimage.__file__).resolve().parent / "data"


def retina() -> Image.Image:
    """scikit-image's ``retina.jpg``: a real colour fundus photograph of a healthy eye."""
    with Image.open(skimage_data_dir() / "retina.jpg") as image:
        return image.convert("RGB")


def field_box(image: Image.Image, threshold: int = 30) -> tuple[int, int, int, int]:
    """The bounding box of the bright field (luma above ``threshold``) of a fundus photo."""
    luma = np.asarray(image.convert("L"))
    rows = np.flatnonzero((luma > threshold).mean(axis=1) > 0.02)
    cols = np.flatnonzero((luma > threshold).mean(axis=0) > 0.02)
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def _jpeg(image: Image.Image, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")


def _brightness(image: Image.Image, factor: float) -> Image.Image:
    return ImageEnhance.Brightness(image).enhance(factor)


def _crop_rows(image: Image.Image, keep: float, shift: float = 0.0) -> Image.Image:
    """Cut the field at the top and bottom (as 4:3 fundus cameras do), keeping ``keep`` of it."""
    left, top, right, bottom = field_box(image)
    height = bottom - top
    cut = height * (1.0 - keep)
    upper = top + cut * (0.5 + shift)
    return image.crop((left, round(upper), right, round(upper + height * keep)))


def _inset(image: Image.Image, aspect: float) -> Image.Image:
    """The photo on a black canvas ``aspect`` times as wide as high (a wide-sensor camera)."""
    height = image.height
    canvas = Image.new("RGB", (round(height * aspect), height))
    canvas.paste(image, ((canvas.width - image.width) // 2, 0))
    return canvas


def retina_variants() -> dict[str, Image.Image]:
    """``retina.jpg`` and benign variants of it, all gradable.

    Rotations, flips, ±15 % brightness, JPEG quality 60, crops to the field and the field
    cut at the top and bottom (or all round) as cameras with a rectangular sensor do; and
    what other cameras do: exposure, colour casts, uneven light, a grey surround, a small
    field in a wide frame, labels in the corners.
    """
    base = retina()
    left, top, right, bottom = field_box(base)
    tight = base.crop((left, top, right, bottom))
    side = right - left
    variants: dict[str, Image.Image] = {
        "original": base,
        "rotate_90": base.rotate(90, expand=True),
        "rotate_180": base.rotate(180),
        "rotate_270": base.rotate(270, expand=True),
        "rotate_30": base.rotate(30, fillcolor=(0, 0, 0)),
        "rotate_-45": base.rotate(-45, fillcolor=(0, 0, 0)),
        "flip_left_right": base.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
        "flip_top_bottom": base.transpose(Image.Transpose.FLIP_TOP_BOTTOM),
        "brightness_+15%": _brightness(base, 1.15),
        "brightness_-15%": _brightness(base, 0.85),
        "jpeg_quality_60": _jpeg(base, 60),
        "jpeg_quality_60_-15%": _jpeg(_brightness(base, 0.85), 60),
        "crop_to_field": tight,
        "crop_to_field_margin": base.crop((left - 20, top - 20, right + 20, bottom + 20)),
        "cut_top_bottom_90%": _crop_rows(base, 0.90),
        "cut_top_bottom_80%": _crop_rows(base, 0.80),
        "cut_top_bottom_75%": _crop_rows(base, 0.75),
        "cut_top_only_85%": _crop_rows(base, 0.85, shift=0.5),
        "cut_bottom_only_85%": _crop_rows(base, 0.85, shift=-0.5),
        "cut_all_round_94%": tight.crop(
            (round(side * 0.03), round(side * 0.03), round(side * 0.97), round(side * 0.97))
        ),
        "cut_4:3_on_sensor": _inset(_crop_rows(base, 0.80), 4 / 3),
        "wide_sensor_3:2": _inset(base, 1.5),
        "small_600px": base.resize((600, 600), Image.Resampling.LANCZOS),
        "slight_blur": base.filter(ImageFilter.GaussianBlur(2)),
        "cut_rotated_90": _crop_rows(base, 0.8).rotate(90, expand=True),
        "cut_top_bottom_65%": _crop_rows(base, 0.65),
        # What other cameras and exposures do to the same eye.
        "dim_30%": _gains(base, 0.3, 0.3, 0.3),
        "bright_140%": _gains(base, 1.4, 1.4, 1.4),
        "yellow_cast": _gains(base, 1.0, 1.35, 0.8),
        "green_cast": _gains(base, 1.0, 1.4, 1.0),
        "blue_cast": _gains(base, 0.9, 1.1, 1.6),
        "pale_fundus": _gains(base, 1.0, 1.6, 1.6),
        "uneven_light": _uneven(base, 0.8),
        "grey_surround_40": _grey_surround(base, 40),
        "small_field_in_16:9": _small_field(base, 0.25),
        "labels_in_corners": _labelled(base),
    }
    return variants


def _gains(image: Image.Image, red: float, green: float, blue: float) -> Image.Image:
    """The photo with its channels scaled: exposure (all alike) or a colour cast."""
    pixels = np.asarray(image, np.float32) * np.array([red, green, blue], np.float32)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def _uneven(image: Image.Image, fall: float) -> Image.Image:
    """Light falling off from left to right by ``fall`` (a decentred pupil)."""
    pixels = np.asarray(image, np.float32)
    ramp = 1.0 - fall * np.linspace(0.0, 1.0, pixels.shape[1], dtype=np.float32)[None, :, None]
    return Image.fromarray(np.clip(pixels * ramp, 0, 255).astype(np.uint8))


def _grey_surround(image: Image.Image, level: int) -> Image.Image:
    """The black surround raised to ``level`` (a camera whose black is grey)."""
    pixels = np.asarray(image).copy()
    surround = np.asarray(image.convert("L")) < 25
    pixels[surround] = np.maximum(pixels[surround], level)
    return Image.fromarray(pixels)


def _small_field(image: Image.Image, share: float) -> Image.Image:
    """The field ``share`` of the width of a 16:9 black frame (a smartphone adapter)."""
    frame = Image.new("RGB", (1600, 900))
    side = round(frame.width * share)
    frame.paste(image.resize((side, side)), ((frame.width - side) // 2, (frame.height - side) // 2))
    return frame


def _labelled(image: Image.Image) -> Image.Image:
    """White labels in two corners of the surround: date, eye, patient id, camera."""
    labelled = image.copy()
    draw = ImageDraw.Draw(labelled)
    draw.text((20, 20), "2026-11-30 10:42  OD  ID 000123", fill=(255, 255, 255), font=_font(48))
    draw.rectangle((1250, 20, 1390, 120), fill=(255, 255, 255))
    draw.text((900, 1330), "45 deg  Flash 50", fill=(255, 255, 255), font=_font(48))
    return labelled


# -- the non-fundus corpus ------------------------------------------------------------------


def _load(name: str) -> Image.Image:
    with Image.open(skimage_data_dir() / name) as image:
        if image.mode in ("RGBA", "LA", "P"):
            image = image.convert("RGBA")
            canvas = Image.new("RGB", image.size, (255, 255, 255))
            canvas.paste(image, mask=image.split()[-1])
            return canvas
        return image.convert("RGB")


#: scikit-image's sample pictures (files of its wheel; none is a fundus photograph).
SKIMAGE_PICTURES = (
    "astronaut.png",
    "brick.png",
    "camera.png",
    "cell.png",
    "chelsea.png",
    "chessboard_RGB.png",
    "clock_motion.png",
    "coffee.png",
    "coins.png",
    "color.png",
    "grass.png",
    "gravel.png",
    "horse.png",
    "hubble_deep_field.jpg",
    "ihc.png",
    "logo.png",
    "moon.png",
    "motorcycle_left.png",
    "page.png",
    "phantom.png",
    "rocket.jpg",
    "text.png",
)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def _document(dark: bool = False, seed: int = 0) -> Image.Image:
    """A page of text: A4 portrait, paragraphs and a heading (dark mode: light text on black)."""
    rng = np.random.default_rng(seed)
    paper, ink = ((20, 20, 24), (220, 220, 220)) if dark else ((252, 252, 250), (20, 20, 20))
    page = Image.new("RGB", (850, 1100), paper)
    draw = ImageDraw.Draw(page)
    draw.text((70, 60), "Quarterly report: retinal imaging service", fill=ink, font=_font(34))
    words = ["the", "of", "patient", "image", "clinic", "review", "results", "referral", "and"]
    y = 140
    while y < 1020:
        line = " ".join(rng.choice(words, size=int(rng.integers(8, 13))))
        draw.text((70, y), line, fill=ink, font=_font(20))
        y += 30 if rng.random() > 0.15 else 60
    return page


def _screenshot(theme: str, seed: int = 0) -> Image.Image:
    """A desktop application window: title bar, sidebar, buttons, a table and text."""
    rng = np.random.default_rng(seed)
    palettes = {
        "light": ((240, 240, 240), (255, 255, 255), (30, 30, 30), (0, 120, 215)),
        "dark": ((30, 30, 30), (45, 45, 48), (212, 212, 212), (14, 99, 156)),
        "red": ((250, 235, 230), (255, 255, 255), (40, 20, 20), (200, 40, 30)),
    }
    back, panel, text, accent = palettes[theme]
    shot = Image.new("RGB", (1280, 800), back)
    draw = ImageDraw.Draw(shot)
    draw.rectangle((0, 0, 1280, 36), fill=accent)
    draw.text((14, 8), "Eye clinic - worklist", fill=(255, 255, 255), font=_font(18))
    draw.rectangle((0, 36, 220, 800), fill=panel)
    for i in range(8):
        draw.text((20, 60 + 40 * i), f"Menu item {i + 1}", fill=text, font=_font(16))
    for row in range(14):
        y = 80 + row * 44
        draw.rectangle((250, y, 1250, y + 38), fill=panel, outline=accent)
        cells = [f"{int(rng.integers(1000, 9999))}", "2026-11-30", "pending", "OK"]
        for col, cell in enumerate(cells):
            draw.text((265 + col * 240, y + 10), cell, fill=text, font=_font(16))
    for i in range(3):
        draw.rounded_rectangle((980 + i * 90, 740, 1060 + i * 90, 780), 8, fill=accent)
    return shot


def _solid(colour: tuple[int, int, int]) -> Image.Image:
    return Image.new("RGB", (512, 512), colour)


def _noise(kind: str, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    if kind == "uniform":
        pixels = rng.integers(0, 256, (400, 400, 3))
    elif kind == "gaussian":
        pixels = rng.normal(128, 40, (400, 400, 3))
    else:  # red-tinted: the colours of a fundus, in no shape at all
        pixels = rng.normal(0, 30, (400, 400, 3)) + np.array([190, 80, 40])
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def _gradient(kind: str) -> Image.Image:
    y, x = np.mgrid[0:512, 0:512] / 511.0
    if kind == "horizontal":
        ramp = np.stack([x, x, x], axis=-1)
    elif kind == "diagonal_colour":
        ramp = np.stack([x, y, 1 - x], axis=-1)
    elif kind == "radial_grey":
        r = np.hypot(x - 0.5, y - 0.5) / 0.5
        fall = np.clip(1.0 - r, 0, 1)
        ramp = np.stack([fall, fall, fall], axis=-1)
    else:  # radial_orange: a glowing orange ball, a fundus's colours and no detail
        r = np.hypot(x - 0.5, y - 0.5) / 0.45
        fall = np.clip(1.0 - r**2, 0, 1)
        ramp = np.stack([fall * 0.9, fall * 0.45, fall * 0.2], axis=-1)
    return Image.fromarray((ramp * 255).astype(np.uint8))


def _round_crop(image: Image.Image) -> Image.Image:
    """A photo cut to a circle on black: the fundus's shape, a picture's content."""
    side = min(image.size)
    square = image.crop((0, 0, side, side)).convert("RGB")
    mask = Image.new("L", (side, side))
    ImageDraw.Draw(mask).ellipse((side * 0.04, side * 0.04, side * 0.96, side * 0.96), fill=255)
    canvas = Image.new("RGB", (side, side))
    canvas.paste(square, mask=mask)
    return canvas


def _drawn_disc(colour: tuple[int, int, int]) -> Image.Image:
    """A flat disc on black, as a logo or a drawing: fundus-shaped, nothing to grade."""
    image = Image.new("RGB", (512, 512))
    ImageDraw.Draw(image).ellipse((30, 30, 482, 482), fill=colour)
    return image


def _slide(seed: int = 0) -> Image.Image:
    """A presentation slide: a title and a bar chart on white."""
    rng = np.random.default_rng(seed)
    slide = Image.new("RGB", (1280, 720), (255, 255, 255))
    draw = ImageDraw.Draw(slide)
    draw.text((80, 50), "Screening uptake by region", fill=(30, 30, 30), font=_font(44))
    draw.line((120, 640, 1180, 640), fill=(0, 0, 0), width=3)
    for i, height in enumerate(rng.integers(80, 420, 8)):
        x = 160 + i * 125
        draw.rectangle((x, 640 - int(height), x + 80, 640), fill=(200, 60 + 20 * i, 40))
    return slide


def _spreadsheet() -> Image.Image:
    """A spreadsheet: a grid of cells with numbers, a header row."""
    sheet = Image.new("RGB", (1200, 800), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    draw.rectangle((0, 0, 1200, 30), fill=(33, 115, 70))
    for row in range(26):
        for col in range(10):
            x, y = col * 120, 30 + row * 30
            draw.rectangle((x, y, x + 120, y + 30), outline=(200, 200, 200))
            number = f"{(row * 37 + col * 11) % 997}"
            draw.text((x + 8, y + 8), number, fill=(0, 0, 0), font=_font(14))
    return sheet


def non_fundus_corpus() -> dict[str, Image.Image]:
    """At least 40 ordinary pictures that are not colour fundus photographs, by name.

    The kinds a fundus check must refuse: natural photos, documents, screenshots, solid
    colours, noise, gradients, and a fundus photo that lost its colour or its light.
    """
    makers: dict[str, Callable[[], Image.Image]] = {
        f"skimage_{name.split('.')[0]}": (lambda name=name: _load(name))
        for name in SKIMAGE_PICTURES
    }
    makers.update(
        {
            "document": _document,
            "document_dark_mode": lambda: _document(dark=True, seed=1),
            "slide_bar_chart": _slide,
            "spreadsheet": _spreadsheet,
            "screenshot_light": lambda: _screenshot("light"),
            "screenshot_dark": lambda: _screenshot("dark", seed=1),
            "screenshot_red_theme": lambda: _screenshot("red", seed=2),
            "solid_black": lambda: _solid((0, 0, 0)),
            "solid_white": lambda: _solid((255, 255, 255)),
            "solid_grey": lambda: _solid((128, 128, 128)),
            "solid_red": lambda: _solid((220, 30, 20)),
            "solid_fundus_orange": lambda: _solid((200, 90, 40)),
            "solid_blue": lambda: _solid((30, 60, 200)),
            "noise_uniform": lambda: _noise("uniform"),
            "noise_gaussian": lambda: _noise("gaussian", seed=1),
            "noise_red": lambda: _noise("red", seed=2),
            "gradient_horizontal": lambda: _gradient("horizontal"),
            "gradient_diagonal_colour": lambda: _gradient("diagonal_colour"),
            "gradient_radial_grey": lambda: _gradient("radial_grey"),
            "retina_greyscale": lambda: retina().convert("L").convert("RGB"),
            "retina_red_free_green": _red_free,
            "retina_black_out": lambda: _brightness(retina(), 0.08),
        }
    )
    return {name: make() for name, make in makers.items()}


def _red_free() -> Image.Image:
    """A red-free fundus photograph: only the green channel (another kind of photograph)."""
    green = retina().split()[1]
    black = Image.new("L", green.size)
    return Image.merge("RGB", (black, green, black))


def fundus_lookalikes() -> dict[str, Image.Image]:
    """Pictures made to look like a fundus: its round field, or its colour, or both.

    Harder than the corpus: a round crop of a red-brown photo has the shape and the colour
    of a fundus photograph, and only its content tells them apart.
    """
    return {
        "gradient_radial_orange": _gradient("radial_orange"),
        "round_crop_chelsea": _round_crop(_load("chelsea.png")),
        "round_crop_coffee": _round_crop(_load("coffee.png")),
        "round_crop_astronaut": _round_crop(_load("astronaut.png")),
        "round_crop_rocket": _round_crop(_load("rocket.jpg")),
        "drawn_disc_orange": _drawn_disc((210, 100, 45)),
        "drawn_disc_white": _drawn_disc((240, 240, 240)),
        "retina_as_flat_disc": _flat_disc_of_retina(),
    }


def _flat_disc_of_retina() -> Image.Image:
    """retina.jpg's field painted in its mean colour: a fundus's shape and colour, no detail."""
    base = retina()
    luma = np.asarray(base.convert("L"))
    inside = luma > 30
    colour = np.asarray(base)[inside].mean(axis=0)
    flat = np.zeros_like(np.asarray(base))
    flat[inside] = colour.astype(np.uint8)
    return Image.fromarray(flat)

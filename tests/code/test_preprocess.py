"""The shared preprocessing: the bad-input corpus, modes, orientation, limits, speed path."""

from __future__ import annotations

import base64

import numpy as np
import pytest
from PIL import Image

from eye_model.preprocess import (
    IMAGE_STAT_NAMES,
    ImageError,
    compute_image_stats,
    decode_image,
    to_image_bytes,
)
from tests.helpers import b64, draw_fundus_like, encode, jpeg_with_orientation, png_header_only

SIZE = 64
FUNDUS = draw_fundus_like(320, seed=3)
JPEG = encode(FUNDUS, "JPEG", quality=90)


def _animated_gif() -> bytes:
    frames = [draw_fundus_like(96, seed=s).convert("P") for s in range(3)]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)


def _palette_png_with_transparency() -> bytes:
    image = FUNDUS.convert("P")
    return encode(image, "PNG", transparency=0)


def _sixteen_bit_png() -> bytes:
    gray = (np.asarray(FUNDUS.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
    return encode(Image.fromarray(gray), "PNG")


def _float_tiff() -> bytes:
    gray = np.asarray(FUNDUS.convert("L"), dtype=np.float32) / 255.0
    return encode(Image.fromarray(gray), "TIFF")


def _corrupt_png() -> bytes:
    data = bytearray(encode(FUNDUS, "PNG"))
    middle = len(data) // 2
    data[middle : middle + 64] = b"\x00" * 64
    return bytes(data)


# (case name, input value, None for a valid prediction or a substring of the expected error)
CORPUS: list[tuple[str, object, str | None]] = [
    ("jpeg_base64", b64(JPEG), None),
    ("jpeg_bytes", JPEG, None),
    ("jpeg_data_uri", "data:image/jpeg;base64," + b64(JPEG), None),
    ("base64_with_newlines", base64.encodebytes(JPEG).decode("ascii"), None),
    ("png_rgb", b64(encode(FUNDUS, "PNG")), None),
    ("png_rgba", b64(encode(FUNDUS.convert("RGBA"), "PNG")), None),
    ("png_la", b64(encode(FUNDUS.convert("LA"), "PNG")), None),
    ("png_bilevel", b64(encode(FUNDUS.convert("1"), "PNG")), None),
    ("png_16bit_gray", b64(_sixteen_bit_png()), None),
    ("png_palette_transparency", b64(_palette_png_with_transparency()), None),
    ("jpeg_grayscale", b64(encode(FUNDUS.convert("L"), "JPEG")), None),
    ("jpeg_cmyk", b64(encode(FUNDUS.convert("CMYK"), "JPEG")), None),
    ("jpeg_progressive", b64(encode(FUNDUS, "JPEG", progressive=True)), None),
    ("jpeg_exif_rotated", b64(jpeg_with_orientation(FUNDUS, 6)), None),
    ("gif_palette", b64(encode(FUNDUS.convert("P"), "GIF")), None),
    ("gif_animated", b64(_animated_gif()), None),
    ("bmp", b64(encode(FUNDUS, "BMP")), None),
    ("tiff", b64(encode(FUNDUS, "TIFF")), None),
    ("tiff_float", b64(_float_tiff()), None),
    ("webp", b64(encode(FUNDUS, "WEBP", quality=80)), None),
    ("smallest_accepted_16px", b64(encode(FUNDUS.resize((16, 16)), "PNG")), None),
    ("truncated_jpeg", b64(JPEG[: len(JPEG) // 2]), "truncated or corrupt"),
    ("jpeg_header_only", b64(JPEG[:120]), "corrupt"),
    ("corrupt_png", b64(_corrupt_png()), "corrupt"),
    ("random_bytes", b64(np.random.default_rng(0).bytes(2048)), "not a readable image"),
    ("empty_string", "", "empty"),
    ("whitespace_only", "   ", "empty"),
    ("empty_bytes", b"", "empty"),
    ("invalid_base64", "this is not base64!!", "not valid base64"),
    ("pdf_bytes", b64(b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF"), "PDF"),
    ("zip_bytes", b64(b"PK\x03\x04" + b"\x00" * 64), "ZIP"),
    ("plain_text", b64(b"hello, this is a text file and not an image"), "looks like text"),
    ("html_text", b64(b"<html><body>fundus.jpg</body></html>"), "looks like text"),
    ("one_pixel", b64(encode(Image.new("RGB", (1, 1)), "PNG")), "below the 16x16"),
    ("bomb_png_20000", b64(png_header_only(20000, 20000)), "above the 40 MP limit"),
    ("wide_strip", b64(encode(Image.new("RGB", (4000, 20)), "PNG")), "aspect ratio"),
    ("null", None, r"empty \(null\)"),
    ("nan", float("nan"), r"empty \(null\)"),
    ("number", 42, "is a int"),
    ("list", [1, 2, 3], "is a list"),
]


@pytest.mark.parametrize(("value", "expected"), [c[1:] for c in CORPUS], ids=[c[0] for c in CORPUS])
def test_bad_input_corpus(value: object, expected: str | None) -> None:
    if expected is None:
        image = decode_image(value, SIZE)
        assert image.pixels.shape == (SIZE, SIZE, 3)
        assert image.pixels.dtype == np.uint8
        # Every valid case holds the fundus picture: a bright field, not a blank canvas.
        assert image.pixels.mean() > 20
    else:
        with pytest.raises(ImageError, match=expected) as info:
            decode_image(value, SIZE)
        # Every error says what to do, not only what went wrong.
        assert any(word in str(info.value) for word in ("send", "resize", "use")), info.value


def test_corpus_is_large_enough() -> None:
    assert len(CORPUS) >= 30
    assert sum(expected is not None for _, _, expected in CORPUS) >= 15


def test_pixel_limit_is_configurable_and_checked_from_the_header() -> None:
    data = encode(FUNDUS, "PNG")
    with pytest.raises(ImageError, match=r"320x320 = 0 MP, above the 0.05 MP limit"):
        decode_image(data, SIZE, max_pixels=50_000)
    # The bomb is refused without decoding: 400 MP of RGB would be 1.2 GB.
    with pytest.raises(ImageError, match="EYE_MODEL_MAX_PIXELS"):
        decode_image(png_header_only(20000, 20000), SIZE)


def test_byte_limit_names_the_setting() -> None:
    with pytest.raises(ImageError, match="EYE_MODEL_MAX_BYTES"):
        to_image_bytes(JPEG, max_bytes=1000)
    with pytest.raises(ImageError, match="EYE_MODEL_MAX_BYTES"):
        to_image_bytes(b64(JPEG), max_bytes=1000)


def test_exif_orientation_is_applied() -> None:
    # A landscape picture, left half red and right half blue.
    array = np.zeros((100, 200, 3), np.uint8)
    array[:, :100] = (255, 0, 0)
    array[:, 100:] = (0, 0, 255)
    source = Image.fromarray(array)
    # Orientation 6: the viewer rotates 90 degrees clockwise, so red ends up on top.
    image = decode_image(jpeg_with_orientation(source, 6), 100, with_stats=False)
    assert (image.width, image.height) == (100, 200)
    top, bottom = image.pixels[10:30, 40:60], image.pixels[70:90, 40:60]
    assert top[..., 0].mean() > 200 and top[..., 2].mean() < 60
    assert bottom[..., 2].mean() > 200 and bottom[..., 0].mean() < 60


def test_letterbox_keeps_the_field_round() -> None:
    wide = Image.new("RGB", (300, 200), (200, 90, 40))
    image = decode_image(encode(wide, "PNG"), 60, with_stats=False)
    # 300x200 becomes 60x40 centred on black: 10 black rows above and below.
    assert image.pixels[:9].max() == 0 and image.pixels[-9:].max() == 0
    assert image.pixels[30, 30].tolist() == [200, 90, 40]


def test_metadata_describes_the_source_without_pixels() -> None:
    large = draw_fundus_like(1200, seed=1)
    data = encode(large, "JPEG", quality=85)
    image = decode_image(b64(data), 224, with_stats=True)
    meta = image.metadata()
    assert meta["img_width"] == 1200 and meta["img_height"] == 1200
    assert meta["img_format"] == "JPEG" and meta["img_mode"] == "RGB"
    assert meta["img_bytes"] == len(data)
    assert set(IMAGE_STAT_NAMES) <= set(meta)
    assert all(not isinstance(v, (bytes, np.ndarray)) for v in meta.values())


def test_draft_decode_matches_a_full_decode() -> None:
    """DCT-domain downscaling changes how, not what: the result stays close to a full decode."""
    large = draw_fundus_like(2000, seed=2)
    data = encode(large, "JPEG", quality=90)
    fast = decode_image(data, 224, with_stats=False).pixels.astype(np.float32)
    full = np.asarray(large.resize((224, 224), Image.Resampling.BILINEAR), np.float32)
    assert np.abs(fast - full).mean() < 6.0


def _jpeg_variants() -> list[tuple[str, bytes]]:
    """JPEGs of the sizes, subsamplings, encodings and markers a fundus archive holds."""
    from PIL import ImageCms

    variants = []
    for width, height in [
        (224, 224),
        (2000, 2000),
        (2000, 1500),
        (700, 700),
        (1000, 600),
        (300, 300),
        (250, 500),
        (97, 131),
    ]:
        image = draw_fundus_like(max(width, height), seed=width).resize((width, height))
        for subsampling in (0, 1, 2):  # 4:4:4, 4:2:2, 4:2:0
            data = encode(image, "JPEG", quality=85, subsampling=subsampling)
            variants.append((f"{width}x{height}-ss{subsampling}", data))
        variants.append((f"{width}x{height}-progressive", encode(image, "JPEG", progressive=True)))
        variants.append((f"{width}x{height}-gray", encode(image.convert("L"), "JPEG")))
        variants.append((f"{width}x{height}-q30", encode(image, "JPEG", quality=30)))
    image = draw_fundus_like(400, seed=9)
    variants.append(("exif-upright", jpeg_with_orientation(image, 1)))
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    variants.append(("icc-profile", encode(image, "JPEG", icc_profile=srgb)))
    variants.append(("restart-markers", encode(image, "JPEG", restart_marker_blocks=4)))
    variants.append(("comment", encode(image, "JPEG", comment=b"fundus camera 3")))
    # Tables too coarse for baseline JPEG are stored with 16-bit entries.
    variants.append(("16-bit-tables", encode(image, "JPEG", qtables=[[300] * 64, [300] * 64])))
    return variants


def _pillow_only_jpegs() -> list[tuple[str, bytes]]:
    """JPEGs whose header the fast path leaves to Pillow, which reads more into them."""
    image = draw_fundus_like(400, seed=9)
    xmp = b'<x:xmpmeta><rdf:Description tiff:Orientation="3"/></x:xmpmeta>'
    return [
        ("exif-rotated", jpeg_with_orientation(image, 6)),
        ("xmp-rotated", encode(image, "JPEG", xmp=xmp)),
        ("multi-picture", encode(image, "MPO", save_all=True, append_images=[image])),
        ("cmyk", encode(image.convert("CMYK"), "JPEG")),
    ]


@pytest.mark.parametrize("size", [64, 224])
def test_fast_jpeg_decode_gives_what_pillow_gives(
    size: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fast JPEG path (no Pillow) is only a faster way to Pillow's pixels and metadata."""
    from eye_model import preprocess

    variants = _jpeg_variants()
    limit = 40_000_000
    used = [name for name, data in variants if preprocess._decode_plain_jpeg(data, size, limit)]
    assert used == [name for name, _ in variants]  # every variant took the fast path
    skipped = [n for n, d in _pillow_only_jpegs() if preprocess._decode_plain_jpeg(d, size, limit)]
    assert skipped == []
    fast = {name: decode_image(data, size, with_stats=True) for name, data in variants}
    monkeypatch.setattr(preprocess, "_decode_plain_jpeg", lambda *args: None)
    for name, data in variants:
        slow = decode_image(data, size, with_stats=True)
        np.testing.assert_array_equal(fast[name].pixels, slow.pixels, err_msg=name)
        assert fast[name].metadata() == slow.metadata(), name
    # What Pillow reads into the others is honoured: orientation from EXIF and from XMP.
    others = dict(_pillow_only_jpegs())
    assert decode_image(others["exif-rotated"], size).format == "JPEG"
    assert decode_image(others["multi-picture"], size).format == "MPO"
    assert decode_image(others["cmyk"], size).mode == "CMYK"


def test_truncated_jpeg_is_refused_on_the_fast_path_and_cmyk_goes_through_pillow() -> None:
    """libjpeg's own report of missing data refuses the file; CMYK is Pillow's to decode."""
    from eye_model import preprocess

    truncated = JPEG[: len(JPEG) // 2]
    with pytest.raises(ImageError, match="Premature end of JPEG file"):
        preprocess._decode_plain_jpeg(truncated, SIZE, 40_000_000)
    with pytest.raises(ImageError, match="truncated or corrupt"):
        decode_image(truncated, SIZE)
    cmyk = encode(FUNDUS.convert("CMYK"), "JPEG")
    assert decode_image(cmyk, SIZE).pixels.shape == (SIZE, SIZE, 3)


def test_image_stats_measure_what_they_name() -> None:
    sharp = np.asarray(draw_fundus_like(128, seed=4))
    blurred = np.asarray(Image.fromarray(sharp).resize((32, 32)).resize((128, 128)))
    dark = (sharp * 0.5).astype(np.uint8)
    s_sharp, s_blur, s_dark = (compute_image_stats(a) for a in (sharp, blurred, dark))
    assert s_blur["img_sharpness"] < 0.5 * s_sharp["img_sharpness"]
    assert s_dark["img_brightness"] == pytest.approx(0.5 * s_sharp["img_brightness"], rel=0.05)
    assert s_sharp["img_mean_r"] > s_sharp["img_mean_g"] > s_sharp["img_mean_b"]


# -- strict decoding ---------------------------------------------------------------------

ACCEPTED_TEXT = "JPEG, PNG, BMP, TIFF, WebP or GIF"


def _refused_formats() -> list[tuple[str, bytes, str | None]]:
    """(format, file, the name the error gives or None) for each format Pillow writes here."""
    rgb, small = FUNDUS, FUNDUS.resize((64, 64))
    cases: list[tuple[str, bytes, str | None]] = [
        ("ICO", encode(small, "ICO"), "ICO"),
        ("PPM", encode(rgb, "PPM"), "PPM"),
        ("TGA", encode(rgb, "TGA"), "TGA"),
        ("PCX", encode(rgb, "PCX"), "PCX"),
        ("SGI", encode(rgb, "SGI"), "SGI"),
        ("DDS", encode(rgb, "DDS"), "DDS"),
        ("QOI", encode(rgb, "QOI"), "QOI"),
        ("JPEG2000", encode(rgb, "JPEG2000"), "JPEG2000"),
        ("EPS", encode(rgb, "EPS"), "EPS"),
        ("PDF", encode(rgb, "PDF"), None),
        ("IM", encode(rgb, "IM"), None),
        ("XBM", encode(rgb.convert("1"), "XBM"), "XBM"),
        ("MSP", encode(rgb.convert("1"), "MSP"), "MSP"),
        ("SPIDER", encode(rgb.convert("F"), "SPIDER"), None),
        ("ICNS", encode(rgb, "ICNS"), "ICNS"),
    ]
    if "AVIF" in Image.SAVE:
        cases.append(("AVIF", encode(rgb, "AVIF"), "AVIF"))
    return cases


@pytest.mark.parametrize(
    ("data", "named"), [c[1:] for c in _refused_formats()], ids=[c[0] for c in _refused_formats()]
)
def test_only_the_accepted_formats_are_opened(
    data: bytes, named: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every other format is refused by name, and none of their parsers ever reads the file."""

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("a refused format's parser was called")

    Image.init()
    for name, (_, accept) in list(Image.OPEN.items()):
        if name not in ("JPEG", "PNG", "BMP", "TIFF", "WEBP", "GIF", "MPO"):
            monkeypatch.setitem(Image.OPEN, name, (never, accept))
    with pytest.raises(ImageError) as info:
        decode_image(data, SIZE)
    message = str(info.value)
    assert ACCEPTED_TEXT in message
    if named is not None:
        assert f"in the {named} format, which is not accepted" in message
    else:
        assert "not a readable image file" in message


def test_eps_never_reaches_ghostscript(monkeypatch: pytest.MonkeyPatch) -> None:
    from PIL import EpsImagePlugin

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("Ghostscript was called")

    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", never)
    with pytest.raises(ImageError, match="EPS format"):
        decode_image(encode(FUNDUS, "EPS"), SIZE)


def _cut(data: bytes, tail: bytes = b"") -> bytes:
    return data[: len(data) // 2] + tail


def _png_with_bad_crc() -> bytes:
    data = bytearray(encode(FUNDUS, "PNG"))
    start = data.find(b"IDAT")
    length = int.from_bytes(data[start - 4 : start], "big")
    data[start + 4 + length] ^= 0xFF  # the first byte of the IDAT chunk's CRC
    return bytes(data)


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    import struct
    import zlib

    crc = zlib.crc32(kind + payload)
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


PROGRESSIVE = encode(FUNDUS, "JPEG", progressive=True)
DAMAGED: list[tuple[str, bytes, str]] = [
    ("half_jpeg_with_end_marker", _cut(JPEG, b"\xff\xd9"), "premature end of data segment"),
    ("truncated_jpeg", _cut(JPEG), "Premature end of JPEG file"),
    ("truncated_progressive_jpeg", _cut(PROGRESSIVE), "Premature end of JPEG file"),
    ("half_progressive_jpeg_with_end_marker", _cut(PROGRESSIVE, b"\xff\xd9"), "premature end"),
    (
        "half_rotated_jpeg_with_end_marker",
        _cut(jpeg_with_orientation(FUNDUS, 6), b"\xff\xd9"),
        "premature end",
    ),
    (
        "half_cmyk_jpeg_with_end_marker",
        _cut(encode(FUNDUS.convert("CMYK"), "JPEG"), b"\xff\xd9"),
        "premature end",
    ),
    ("truncated_png", _cut(encode(FUNDUS, "PNG")), "truncated"),
    ("half_png_with_iend", _cut(encode(FUNDUS, "PNG"), _png_chunk(b"IEND", b"")), "truncated|CRC"),
    ("png_bad_crc", _png_with_bad_crc(), "IDAT chunk fails its CRC check"),
    ("truncated_tiff", _cut(encode(FUNDUS, "TIFF")), "truncated"),
    ("truncated_webp", _cut(encode(FUNDUS, "WEBP")), "corrupt"),
    ("truncated_gif", _cut(encode(FUNDUS.convert("P"), "GIF")), "truncated"),
    ("half_gif_with_trailer", _cut(encode(FUNDUS.convert("P"), "GIF"), b"\x3b"), "truncated"),
    ("truncated_bmp", _cut(encode(FUNDUS, "BMP")), "truncated"),
]


@pytest.mark.parametrize(
    ("data", "expected"), [c[1:] for c in DAMAGED], ids=[c[0] for c in DAMAGED]
)
def test_truncated_or_corrupt_data_is_refused(data: bytes, expected: str) -> None:
    """Refused even when an end marker follows: Pillow would fill the missing half with grey."""
    with pytest.raises(ImageError, match=expected) as info:
        decode_image(data, SIZE)
    assert "send the complete, unmodified" in str(info.value)


def test_pillow_never_loads_truncated_images(monkeypatch: pytest.MonkeyPatch) -> None:
    from PIL import ImageFile

    import eye_model.pyfunc  # noqa: F401 - importing the served model changes nothing

    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    tiff = _cut(encode(FUNDUS, "TIFF"))
    with pytest.raises(ImageError, match="truncated"):
        decode_image(tiff, SIZE)
    # Should another library turn it on, nothing truncated is scored all the same.
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    for data in (tiff, _cut(encode(FUNDUS.convert("P"), "GIF")), _cut(JPEG, b"\xff\xd9")):
        with pytest.raises(ImageError, match="LOAD_TRUNCATED_IMAGES|truncated or corrupt"):
            decode_image(data, SIZE)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_float_images_with_nan_or_infinity_are_refused(bad: float) -> None:
    gray = np.asarray(FUNDUS.convert("L"), dtype=np.float32) / 255.0
    gray[10:20, 10:20] = bad
    with pytest.raises(ImageError, match="100 of 102,400 pixels that are not numbers"):
        decode_image(encode(Image.fromarray(gray), "TIFF"), SIZE)
    everything = np.full((64, 64), bad, np.float32)
    with pytest.raises(ImageError, match="NaN or infinite"):
        decode_image(encode(Image.fromarray(everything), "TIFF"), SIZE)


@pytest.mark.parametrize(
    "exif",
    [b"Exif\0\0garbage!!", b"Exif\0\0MM\x00\x2a\x00\x00\x00\x08\x00\x05\x01\x12", b"Exif\0\0II*\0"],
    ids=["not-tiff", "cut-entry", "cut-header"],
)
def test_damaged_exif_never_fails_an_image_that_decodes(exif: bytes) -> None:
    from eye_model import preprocess

    plain = encode(FUNDUS, "JPEG", exif=exif)
    header = preprocess._plain_jpeg_header(plain)
    assert header is not None and header.orientation == 1  # EXIF ignored, left upright
    image = decode_image(plain, SIZE)
    np.testing.assert_array_equal(image.pixels, decode_image(encode(FUNDUS, "JPEG"), SIZE).pixels)
    cmyk = encode(FUNDUS.convert("CMYK"), "JPEG", exif=exif)  # Pillow's path reads it too
    assert decode_image(cmyk, SIZE).mode == "CMYK"


def _zero_sized() -> list[tuple[str, bytes, str]]:
    import struct

    bmp = bytearray(encode(FUNDUS, "BMP"))
    struct.pack_into("<i", bmp, 18, 0)
    jpeg = bytearray(JPEG)
    frame = jpeg.find(b"\xff\xc0")
    struct.pack_into(">H", jpeg, frame + 5, 0)
    return [
        ("png_0x0", png_header_only(0, 0), "0x0"),
        ("png_0x300", png_header_only(0, 300), "0x300"),
        ("bmp_0_wide", bytes(bmp), "0x320"),
        ("jpeg_0_high", bytes(jpeg), "320x0"),
    ]


@pytest.mark.parametrize(
    ("data", "size"), [c[1:] for c in _zero_sized()], ids=[c[0] for c in _zero_sized()]
)
def test_a_header_of_zero_pixels_is_named(data: bytes, size: str) -> None:
    with pytest.raises(ImageError, match=f"header says the image is {size} px, an image with no"):
        decode_image(data, SIZE)


def test_transparency_is_laid_on_black_without_full_size_copies() -> None:
    """A 16-bit RGBA PNG: the result equals compositing on black, then shrinking."""
    rgba = np.zeros((400, 400, 4), np.uint8)
    rgba[..., :3] = np.asarray(draw_fundus_like(400, seed=5))
    rgba[..., 3] = np.linspace(0, 255, 400, dtype=np.uint8)[None, :]
    image = decode_image(encode(Image.fromarray(rgba), "PNG"), 100)
    composed = np.asarray(
        Image.alpha_composite(Image.new("RGBA", (400, 400), (0, 0, 0, 255)), Image.fromarray(rgba))
        .convert("RGB")
        .resize((100, 100), Image.Resampling.BILINEAR, reducing_gap=3.0),
        np.int16,
    )
    assert np.abs(image.pixels.astype(np.int16) - composed).max() <= 2

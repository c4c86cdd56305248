"""The one preprocessing path: encoded image → validated RGB array at the model's input size.

Training (``eye_model.data``) and serving (``eye_model.pyfunc``) both call
:func:`decode_image`, so the two can never preprocess differently.

Pillow reads and decodes every format. Ordinary upright RGB and grayscale JPEGs, by far
the most common fundus files, skip Pillow: simplejpeg and a short marker scan read the
same header facts (size, mode, EXIF orientation, quantisation tables), and simplejpeg
decodes the same pixels with the same libjpeg-turbo at the same DCT scale as Pillow's
``draft``, in one call that releases the GIL, so a thread pool really decodes on every
core. The tests check both paths give equal pixels and metadata.
"""

from __future__ import annotations

import base64
import binascii
import io
import math
import re
import struct
import warnings
from dataclasses import dataclass, field

import numpy as np
import pybase64
import simplejpeg
from PIL import Image, ImageOps

from eye_model.config import DEFAULT_IMAGE_SIZE, DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS
from eye_model.decode_budget import RequestGate
from eye_model.image_checks import (
    ACCEPTED_FORMATS,
    ImageError,
    check_finite,
    check_truncated_images_refused,
    is_jpeg_corruption,
    jpeg_damage,
    unopened_error,
    verify_jpeg,
    verify_png,
    zero_size_error,
)
from eye_model.settings import env_name

__all__ = [
    "IMAGE_STAT_NAMES",
    "Base64Text",
    "check_image_header",
    "FundusImage",
    "ImageError",
    "compute_image_stats",
    "decode_image",
    "to_image_bytes",
]

#: Smallest accepted side of a source image, in pixels.
MIN_SIDE = 16

#: Widest accepted aspect ratio (long side / short side) of a source image.
MAX_ASPECT_RATIO = 5.0

#: Names of the image statistics computed by :func:`compute_image_stats`.
IMAGE_STAT_NAMES: tuple[str, ...] = (
    "img_brightness",
    "img_contrast",
    "img_sharpness",
    "img_mean_r",
    "img_mean_g",
    "img_mean_b",
    "img_jpeg_quality",
)

# The luminance quantisation table of the JPEG standard (Annex K), quality 50.
_STANDARD_LUMA_TABLE_SUM = sum(
    (16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55)
    + (14, 13, 16, 24, 40, 57, 69, 56, 14, 17, 22, 29, 51, 87, 80, 62)
    + (18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92)
    + (49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99)
)

_DATA_URI = re.compile(r"^data:[\w/+.-]*;base64,", re.IGNORECASE)
_BOMB_PIXELS = re.compile(r"\((\d+) pixels\)")
_EXIF_ORIENTATION = 0x0112
# Decoding without limits (training, evaluation, tests).
_NO_LIMITS = RequestGate()


@dataclass
class FundusImage:
    """A decoded image ready for the network, with what was learnt about its source.

    Attributes:
        pixels: uint8 array of shape (image_size, image_size, 3), RGB.
        width: source width in pixels (after EXIF orientation).
        height: source height in pixels (after EXIF orientation).
        format: source format as Pillow names it ("JPEG", "PNG", ...).
        mode: source colour mode as Pillow names it ("RGB", "CMYK", "I;16", ...).
        byte_size: size of the encoded source, in bytes.
    """

    pixels: np.ndarray | None
    width: int
    height: int
    format: str
    mode: str
    byte_size: int
    stats: dict[str, float] = field(default_factory=dict)

    def require_pixels(self) -> np.ndarray:
        """The decoded pixels; an error once they were released after scoring."""
        if self.pixels is None:
            raise ValueError("the pixels of this image were released after scoring")
        return self.pixels

    def add_pixel_stats(self) -> None:
        """Compute :func:`compute_image_stats` from the pixels, ahead of the header's stats."""
        self.stats = {**compute_image_stats(self.require_pixels()), **self.stats}

    def metadata(self) -> dict[str, object]:
        """Return the image metadata that may be logged: no pixels, no bytes, no names."""
        return {
            "img_width": self.width,
            "img_height": self.height,
            "img_format": self.format,
            "img_mode": self.mode,
            "img_bytes": self.byte_size,
            **self.stats,
        }


@dataclass(frozen=True, slots=True)
class Base64Text:
    """Base64 text held as ASCII bytes: a zero-copy view of one cell of an Arrow column.

    pandas keeps text in Arrow buffers; :func:`to_image_bytes` decodes a view of them
    without first copying the text into a Python string.
    """

    data: memoryview

    def decode(self, max_bytes: int) -> bytes:
        """The encoded image file, decoded straight from the view when the text is plain."""
        if len(self.data) <= max_bytes * 4 // 3 + 4:
            try:
                return pybase64.b64decode(self.data, validate=True)
            except (binascii.Error, ValueError):
                pass
        # A data: URI, line breaks, bad characters, an oversized file: the text path
        # accepts or refuses them with its messages.
        return _decode_base64_text(str(self.data, "utf-8", "replace"), max_bytes)


def to_image_bytes(value: object, *, max_bytes: int = DEFAULT_MAX_BYTES) -> bytes:
    """Turn one ``image`` cell into the encoded file's bytes.

    Args:
        value: base64 text (optionally a ``data:`` URI, as ``str`` or :class:`Base64Text`),
            or the file's bytes.
        max_bytes: the largest encoded image accepted, in bytes.

    Returns:
        The encoded image file.

    Raises:
        ImageError: for a missing value, a wrong type, invalid base64 or an oversized file.
    """
    if value is None or (isinstance(value, float) and math.isnan(value)):
        raise ImageError("image is empty (null); send the image file's bytes, base64-encoded")
    if isinstance(value, Base64Text):
        data = value.decode(max_bytes)
    elif isinstance(value, (bytes, bytearray, memoryview)):
        data = bytes(value)
    elif isinstance(value, str):
        data = _decode_base64_text(value, max_bytes)
    else:
        raise ImageError(
            f"image is a {type(value).__name__}, not base64 text or bytes; "
            "send the image file's bytes, base64-encoded"
        )
    if not data:
        raise ImageError("image is empty (0 bytes); send the image file's bytes, base64-encoded")
    if len(data) > max_bytes:
        raise ImageError(
            f"image is {len(data):,} bytes, above the {max_bytes:,} byte limit; "
            f"resize it or raise {env_name('max_bytes')}"
        )
    return data


def _decode_base64_text(value: str, max_bytes: int) -> bytes:
    text = _DATA_URI.sub("", value.strip(), count=1)
    if len(text) > max_bytes * 4 // 3 + 4:
        raise ImageError(
            f"image is about {len(text) * 3 // 4:,} bytes, above the {max_bytes:,} byte "
            f"limit; resize it or raise {env_name('max_bytes')}"
        )
    try:
        # pybase64 (SIMD) decodes a 2000 px photo's base64 in 0.04 ms; the standard
        # library takes 1.5 ms, holding the GIL. It gives the same bytes and errors.
        return pybase64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        pass
    # Base64 split over lines is common (the `base64` tool wraps at 76 columns).
    # The standard library's messages say what is wrong ("Incorrect padding").
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ImageError(
            f"image is not valid base64 ({exc}); send the file's bytes base64-encoded "
            "(for example `base64 -w0 photo.jpg`)"
        ) from None


def _open(data: bytes, max_pixels: int) -> Image.Image:
    """Open an image lazily and check its size from the header, before any pixel is decoded."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
    except Image.DecompressionBombError as exc:
        match = _BOMB_PIXELS.search(str(exc))
        pixels = int(match.group(1)) if match else 0
        raise ImageError(
            f"image has {pixels / 1e6:,.0f} MP, above the {max_pixels / 1e6:g} MP limit; "
            f"resize it or raise {env_name('max_pixels')}"
        ) from None
    except Image.UnidentifiedImageError:
        raise unopened_error(data) from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise ImageError(
            f"image header is corrupt ({exc}); send the complete, unmodified image file"
        ) from None
    _check_size(*image.size, max_pixels)
    return image


def check_image_header(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
    """Check an encoded image's format and size from its header, decoding no pixel (~0.1 ms).

    Raises:
        ImageError: for what :func:`decode_image` would refuse from the header alone.
    """
    _open(data, max_pixels).close()


def _check_size(width: int, height: int, max_pixels: int) -> None:
    """Refuse a source that is too large, too small or too narrow, from its header's size."""
    if width <= 0 or height <= 0:
        raise zero_size_error(width, height)
    if width * height > max_pixels:
        raise ImageError(
            f"image is {width}x{height} = {width * height / 1e6:,.0f} MP, above the "
            f"{max_pixels / 1e6:g} MP limit; resize it or raise {env_name('max_pixels')}"
        )
    if min(width, height) < MIN_SIDE:
        raise ImageError(
            f"image is {width}x{height} px, below the {MIN_SIDE}x{MIN_SIDE} px minimum; "
            "send the full fundus photograph"
        )
    if max(width, height) / min(width, height) > MAX_ASPECT_RATIO:
        raise ImageError(
            f"image is {width}x{height} px, an aspect ratio above {MAX_ASPECT_RATIO:g}:1 "
            "that no fundus camera produces; send the full, uncropped fundus photograph"
        )


_GRAY_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")
_ALPHA_MODES = ("RGBA", "LA", "PA", "La", "RGBa")
# Bytes per pixel of each Pillow mode as the source holds it (more for 16-bit sources).
_MODE_BYTES = {"1": 1, "L": 1, "P": 1, "LA": 2, "La": 2, "PA": 2, "RGB": 3, "YCbCr": 3}
_MODE_BYTES.update({"LAB": 3, "HSV": 3, "I;16": 2, "I;16L": 2, "I;16B": 2, "I;16N": 2})


def decoded_bytes(image: Image.Image) -> int:
    """Bytes of the source's pixels once decoded: width x height x its bytes per pixel.

    Counted in the source's own sample size: a 16-bit RGBA PNG is 8 bytes per pixel even
    though Pillow keeps 8 bits of each sample.
    """
    per_pixel = _MODE_BYTES.get(image.mode, 4)
    tiles = getattr(image, "tile", None)
    rawmode = tiles[0].args if tiles and isinstance(tiles[0].args, str) else ""
    if ";16" in rawmode and not image.mode.startswith("I"):
        per_pixel *= 2
    return image.size[0] * image.size[1] * per_pixel


def _to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit "RGB", "L" or "RGBa" at full size, in few copies.

    Gray stays "L" and transparency becomes premultiplied "RGBa" (its colour is the
    image laid on black, like the surround): :func:`_fit_square` shrinks them, and
    :func:`_rgb_array` makes the small result RGB, so a giant source is never copied
    into four bytes per pixel more than once.
    """
    mode = image.mode
    if mode in ("RGB", "L"):
        return image
    if mode in _GRAY_MODES:
        extrema = image.getextrema()  # one band: (lowest, highest)
        top = float(extrema[1]) if isinstance(extrema[1], (int, float)) else 0.0
        # 16-bit sources use the 0-65535 range, floats 0-1; wider ones are scaled by their maximum.
        if mode == "F" and top <= 1.0:
            scale = 255.0
        else:
            scale = 1.0 if top <= 255 else 255.0 / max(top, 65535.0)
        array = np.array(image, dtype=np.float32)  # a writable copy
        array *= scale
        np.clip(array, 0, 255, out=array)
        return Image.fromarray(array.astype(np.uint8))
    if mode == "1":
        return image.convert("L")
    if mode in _ALPHA_MODES or (mode == "P" and "transparency" in image.info):
        if mode not in ("RGBA", "RGBa"):
            image = image.convert("RGBA")
        return image if image.mode == "RGBa" else image.convert("RGBa")
    return image.convert("RGB")


def _rgb_array(image: Image.Image) -> np.ndarray:
    """The uint8 RGB array of a small image in a mode :func:`_to_rgb` returns."""
    if image.mode == "RGBa":  # premultiplied colour is the image laid on black
        image = Image.merge("RGB", image.split()[:3])
    elif image.mode != "RGB":
        image = image.convert("RGB")
    return np.asarray(image, dtype=np.uint8)


def draft_scale(size: tuple[int, int], image_size: int) -> int:
    """The JPEG DCT scale (1, 2, 4 or 8) that Pillow's ``draft`` picks for ``image_size``.

    The largest reduction that keeps both sides at least ``image_size`` (1 for a source
    smaller than that).
    """
    scale = min(size[0] // image_size, size[1] // image_size)
    return next((s for s in (8, 4, 2) if scale >= s), 1)


@dataclass(frozen=True)
class _JpegHeader:
    """What :func:`_plain_jpeg_header` reads: all that Pillow would report of the file."""

    width: int
    height: int
    mode: str
    orientation: int
    quality: float | None


# simplejpeg's colour spaces, as Pillow names the mode of a JPEG in them.
_JPEG_MODES = {"YCbCr": "RGB", "RGB": "RGB", "Gray": "L"}


def _plain_jpeg_header(data: bytes) -> _JpegHeader | None:
    """Read a plain JPEG's size, mode, EXIF orientation and quality without Pillow.

    Pillow's header parsing is Python that holds the GIL for about 40 us per file, a fifth
    of decoding a 224 px JPEG, and it kept two decoding threads from using two cores. This
    reads the same facts from the marker segments in a few microseconds. Anything it is not
    sure to read exactly as Pillow does (XMP or several EXIF blocks, multi-picture files,
    CMYK, a damaged marker) returns None, and the caller asks Pillow.
    """
    try:
        height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
    except Exception:  # not a JPEG simplejpeg can read: Pillow decides and explains
        return None
    mode = _JPEG_MODES.get(colorspace)
    if mode is None:
        return None
    tables: dict[int, list[int]] = {}
    exif: bytes | None = None
    pos, end = 2, len(data)
    while True:
        if pos + 4 > end or data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0xDA:  # start of scan: the header is over
            break
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        segment = data[pos + 4 : pos + 2 + length]
        if length < 2 or len(segment) != length - 2:
            return None
        if marker == 0xDB:  # quantisation tables, possibly several per segment
            while segment:
                wide = segment[0] >> 4
                size = 1 + 64 * (2 if wide else 1)
                if len(segment) < size:
                    return None
                body = segment[1:size]
                tables[segment[0] & 15] = list(struct.unpack(">64H", body) if wide else body)
                segment = segment[size:]
        elif marker == 0xE1:  # EXIF is read like Pillow does; XMP (orientation too) is not
            if not segment.startswith(b"Exif\0\0") or exif is not None:
                return None
            exif = segment
        elif marker == 0xE2 and segment.startswith(b"MPF\0"):  # Pillow: a multi-picture file
            return None
        pos += 2 + length
    orientation = 1 if exif is None else _exif_orientation(exif)
    luma = tables.get(0, next(iter(tables.values()), None))
    return _JpegHeader(width, height, mode, orientation, _quality_from_table(luma))


def _decode_jpeg_scaled(data: bytes, size: tuple[int, int], image_size: int) -> np.ndarray | None:
    """Decode a baseline RGB or grayscale JPEG with simplejpeg, at Pillow's draft scale.

    The same libjpeg-turbo decode, DCT scaling and upsampling as Pillow's ``draft`` and
    ``load`` (the tests check the pixels are equal), in one call that holds the GIL for
    microseconds, where Pillow's Python holds it for about a third of a 224 px decode; two
    decoding threads then really use two cores.

    Decoding is strict: libjpeg's warnings of missing or corrupt data (a file cut short,
    even with an end marker appended) refuse the image, where Pillow would fill the
    missing part with grey. Bytes skipped between markers, which lose no pixel, do not.

    Returns:
        The RGB array at the scaled size, or None when simplejpeg cannot decode the file
        (the caller then decodes it with Pillow, whose errors name the problem).

    Raises:
        ImageError: when libjpeg reports missing or corrupt data.
    """
    scale = draft_scale(size, image_size)
    # The smallest DCT scale giving at least this size is exactly 1/scale.
    scaled = {"min_width": -(-size[0] // scale), "min_height": -(-size[1] // scale)}
    try:
        return simplejpeg.decode_jpeg(data, colorspace="RGB", **scaled)
    except ValueError as exc:
        if is_jpeg_corruption(str(exc)):
            raise jpeg_damage(str(exc)) from None
        if "extraneous bytes" in str(exc):
            return _decode_jpeg_lenient(data, scaled)
        return None
    except Exception:  # anything else simplejpeg refuses goes through Pillow
        return None


def _decode_jpeg_lenient(data: bytes, scaled: dict[str, int]) -> np.ndarray | None:
    """Decode a JPEG whose only flaw is bytes between markers (some cameras write them)."""
    try:
        return simplejpeg.decode_jpeg(data, colorspace="RGB", strict=False, **scaled)
    except Exception:  # Pillow decides and explains
        return None


def _fit_square(image: Image.Image, size: int) -> Image.Image:
    """Letterbox onto a black square and resize to ``size`` x ``size``.

    Fundus photos are a round field on black; padding keeps the field round
    where stretching would squash it.
    """
    width, height = image.size
    scale = size / max(width, height)
    new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
    if (new_w, new_h) != (width, height):
        image = image.resize((new_w, new_h), Image.Resampling.BILINEAR, reducing_gap=3.0)
    if new_w == new_h == size:
        return image
    canvas = Image.new(image.mode, (size, size))
    canvas.paste(image, ((size - new_w) // 2, (size - new_h) // 2))
    return canvas


def decode_image(
    value: object,
    image_size: int = DEFAULT_IMAGE_SIZE,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int = DEFAULT_MAX_BYTES,
    with_stats: bool = False,
    gate: RequestGate | None = None,
) -> FundusImage:
    """Decode one image into the network's input.

    Args:
        value: base64 text (optionally a ``data:`` URI) or the encoded file's bytes.
            JPEG, PNG, BMP, TIFF, WebP and GIF (first frame) are read; any colour
            mode becomes RGB; EXIF orientation is applied.
        image_size: side of the square output, in pixels.
        max_pixels: the largest source (width x height) accepted, checked from the
            header before decoding so an oversized image costs no memory.
        max_bytes: the largest encoded file accepted, in bytes.
        with_stats: also compute :func:`compute_image_stats` on the output (about 0.7 ms
            at 224 px; the served model computes them off the request path instead).
        gate: the request's limits (pixel budget, time limit, the worker's memory
            budget), passed once the header gave the decoded size and before any pixel
            is decoded; None decodes without them.

    Returns:
        The decoded image and its metadata.

    Raises:
        ImageError: for anything that is not a usable image; the message names
            the problem and the fix.
    """
    data = to_image_bytes(value, max_bytes=max_bytes)
    gate = gate or _NO_LIMITS
    image = _decode_plain_jpeg(data, image_size, max_pixels, gate) or _decode_with_pillow(
        data, image_size, max_pixels, gate
    )
    if with_stats:
        image.add_pixel_stats()
    return image


def _decode_plain_jpeg(
    data: bytes, image_size: int, max_pixels: int, gate: RequestGate | None = None
) -> FundusImage | None:
    """The fast path: an upright RGB or grayscale JPEG, read and decoded without Pillow.

    Returns:
        The image, or None when it needs Pillow (another format or mode, EXIF rotation,
        anything simplejpeg refuses).

    Raises:
        ImageError: for a source outside the limits, or missing or corrupt data.
    """
    if not data.startswith(b"\xff\xd8"):
        return None
    header = _plain_jpeg_header(data)
    if header is None or header.orientation != 1:
        return None
    _check_size(header.width, header.height, max_pixels)
    scale = draft_scale((header.width, header.height), image_size)
    pixels_out = -(-header.width // scale) * -(-header.height // scale)
    with (gate or _NO_LIMITS).admit(pixels_out, pixels_out * 3):
        decoded = _decode_jpeg_scaled(data, (header.width, header.height), image_size)
    if decoded is None:
        return None
    if decoded.shape[:2] == (image_size, image_size):
        pixels = decoded
    else:
        pixels = np.asarray(_fit_square(Image.fromarray(decoded), image_size))
    quality = {} if header.quality is None else {"img_jpeg_quality": header.quality}
    return FundusImage(
        pixels=pixels,
        width=header.width,
        height=header.height,
        format="JPEG",
        mode=header.mode,
        byte_size=len(data),
        stats=quality,
    )


def _decode_with_pillow(
    data: bytes, image_size: int, max_pixels: int, gate: RequestGate | None = None
) -> FundusImage:
    """Decode any accepted format and mode with Pillow, applying EXIF orientation."""
    image = _open(data, max_pixels)
    source_format = image.format or "unknown"
    source_mode = image.mode
    width, height = image.size
    jpeg_quality = estimate_jpeg_quality(image) if source_format in ("JPEG", "MPO") else None
    if source_format in ("JPEG", "MPO"):
        verify_jpeg(data)
    elif source_format == "PNG":
        verify_png(data)
    else:  # Pillow's own truncation errors are the check
        check_truncated_images_refused()
    orientation = _pillow_orientation(image)
    if orientation in (5, 6, 7, 8):
        width, height = height, width
    if source_format == "JPEG":
        # DCT-domain downscaling: decode at 1/2, 1/4 or 1/8 scale, never below the target.
        image.draft("RGB", (image_size, image_size))
    with (gate or _NO_LIMITS).admit(image.size[0] * image.size[1], decoded_bytes(image)):
        pixels = _pillow_pixels(image, orientation, image_size)
    return FundusImage(
        pixels=pixels,
        width=width,
        height=height,
        format=source_format,
        mode=source_mode,
        byte_size=len(data),
        stats={} if jpeg_quality is None else {"img_jpeg_quality": jpeg_quality},
    )


def _pillow_orientation(image: Image.Image) -> int:
    """The EXIF orientation, or 1 when the EXIF block is damaged (it is then ignored)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            orientation = image.getexif().get(_EXIF_ORIENTATION, 1)
    except Exception:  # damaged EXIF never fails an image that decodes
        return 1
    return orientation if isinstance(orientation, int) else 1


def _exif_orientation(exif: bytes) -> int:
    """The orientation in a JPEG's EXIF block, or 1 when the block is damaged."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            parsed = Image.Exif()
            parsed.load(exif)
            orientation = parsed.get(_EXIF_ORIENTATION, 1)
    except Exception:  # damaged EXIF never fails an image that decodes
        return 1
    return orientation if isinstance(orientation, int) else 1


def _pillow_pixels(image: Image.Image, orientation: int, image_size: int) -> np.ndarray:
    """Decode, orient and shrink an opened image; its full-size pixels are freed on return."""
    try:
        if orientation in (2, 3, 4, 5, 6, 7, 8):
            oriented = ImageOps.exif_transpose(image)
        else:
            image.load()  # as exif_transpose would, without reading the EXIF again or a copy
            oriented = image
        check_finite(oriented)
        return _rgb_array(_fit_square(_to_rgb(oriented), image_size))
    except ImageError:
        raise
    except (OSError, ValueError, SyntaxError, EOFError, IndexError, KeyError) as exc:
        raise ImageError(
            f"image data is truncated or corrupt ({exc}); send the complete, unmodified file"
        ) from None
    finally:
        image.close()  # frees the decoded pixels now, not when the caller lets go


def estimate_jpeg_quality(image: Image.Image) -> float | None:
    """Estimate the JPEG quality (1-100, libjpeg scale) from the quantisation tables.

    Read from the header, so it costs nothing; a change of camera or export settings
    shows up here long before it shows in the pixels.

    Returns:
        The estimated quality, or None for a source that is not a JPEG.
    """
    tables = getattr(image, "quantization", None)
    if not tables:
        return None
    return _quality_from_table(list(tables.get(0, next(iter(tables.values())))))


def _quality_from_table(luma: list[int] | None) -> float | None:
    """The libjpeg quality (1-100) whose scaling of the standard table gives ``luma``."""
    if luma is None or len(luma) != 64:
        return None
    scale = 100.0 * sum(luma) / _STANDARD_LUMA_TABLE_SUM
    quality = (200.0 - scale) / 2.0 if scale <= 100.0 else 5000.0 / scale
    return float(min(100.0, max(1.0, quality)))


_LEVELS = np.arange(256, dtype=np.float64)
_SQUARES = _LEVELS * _LEVELS


def compute_image_stats(pixels: np.ndarray | Image.Image) -> dict[str, float]:
    """Summarise an RGB image for monitoring: no pixels leave this function.

    Means and spread come from Pillow's histograms and the Laplacian is taken on 16-bit
    integers: about 0.3 ms for a 224 px image, so a serving request can afford it.

    Args:
        pixels: uint8 array (H, W, 3) or an RGB Pillow image.

    Returns:
        ``img_brightness`` (mean luma, 0-255), ``img_contrast`` (standard deviation
        of luma, 0-255), ``img_sharpness`` (variance of the 4-neighbour Laplacian
        of luma), ``img_mean_r``/``_g``/``_b`` (channel means, 0-255). The source's
        ``img_jpeg_quality`` is added by :func:`decode_image`, which sees the header.
    """
    image = pixels if isinstance(pixels, Image.Image) else Image.fromarray(pixels, "RGB")
    gray = image.convert("L")
    n = float(image.width * image.height)
    colour = np.asarray(image.histogram(), dtype=np.float64).reshape(3, 256) @ _LEVELS / n
    luma_hist = np.asarray(gray.histogram(), dtype=np.float64)
    brightness = float(luma_hist @ _LEVELS / n)
    spread = float(luma_hist @ _SQUARES / n) - brightness * brightness
    luma = np.asarray(gray).astype(np.int16)
    laplacian = (
        luma[:-2, 1:-1] + luma[2:, 1:-1] + luma[1:-1, :-2] + luma[1:-1, 2:] - 4 * luma[1:-1, 1:-1]
    )
    flat = laplacian.astype(np.float32).ravel()
    mean = float(flat.sum(dtype=np.float64)) / max(flat.size, 1)
    return {
        "img_brightness": brightness,
        "img_contrast": float(np.sqrt(max(spread, 0.0))),
        "img_sharpness": float(flat @ flat) / max(flat.size, 1) - mean * mean,
        "img_mean_r": float(colour[0]),
        "img_mean_g": float(colour[1]),
        "img_mean_b": float(colour[2]),
    }

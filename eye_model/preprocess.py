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
from PIL import Image, ImageOps, ImageStat

from eye_model.config import DEFAULT_IMAGE_SIZE, DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS
from eye_model.settings import env_name

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


class ImageError(ValueError):
    """An image that cannot be used; the message names the problem and the fix."""


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
            image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        match = _BOMB_PIXELS.search(str(exc))
        pixels = int(match.group(1)) if match else 0
        raise ImageError(
            f"image has {pixels / 1e6:,.0f} MP, above the {max_pixels / 1e6:g} MP limit; "
            f"resize it or raise {env_name('max_pixels')}"
        ) from None
    except Image.UnidentifiedImageError:
        kind = _describe_unknown(data)
        raise ImageError(
            f"image is not a readable image file ({kind}); send a JPEG, PNG, BMP, TIFF, WebP "
            "or GIF fundus photograph"
        ) from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise ImageError(
            f"image header is corrupt ({exc}); send the complete, unmodified image file"
        ) from None
    _check_size(*image.size, max_pixels)
    return image


def _check_size(width: int, height: int, max_pixels: int) -> None:
    """Refuse a source that is too large, too small or too narrow, from its header's size."""
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


def _describe_unknown(data: bytes) -> str:
    """Say what an unreadable payload looks like, without echoing it."""
    head = data[:8]
    if head.startswith(b"%PDF"):
        return "it looks like a PDF document"
    if head.startswith(b"PK\x03\x04"):
        return "it looks like a ZIP archive"
    try:
        data[:256].decode("utf-8")
    except UnicodeDecodeError:
        return f"{len(data):,} bytes of unknown format"
    return "it looks like text"


def _to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB; transparency is laid on black, like the surround."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        array = np.asarray(image, dtype=np.float32)
        top = float(array.max()) if array.size else 0.0
        # 16-bit sources use the 0-65535 range, floats 0-1; wider ones are scaled by their maximum.
        if mode == "F" and top <= 1.0:
            scale = 255.0
        else:
            scale = 1.0 if top <= 255 else 255.0 / max(top, 65535.0)
        return Image.fromarray(np.clip(array * scale, 0, 255).astype(np.uint8), "L").convert("RGB")
    if mode in ("RGBA", "LA", "PA", "La", "RGBa") or (mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


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
    orientation = 1
    if exif is not None:
        parsed = Image.Exif()
        parsed.load(exif)
        orientation = parsed.get(_EXIF_ORIENTATION, 1)
    luma = tables.get(0, next(iter(tables.values()), None))
    return _JpegHeader(width, height, mode, orientation, _quality_from_table(luma))


def _decode_jpeg_scaled(data: bytes, size: tuple[int, int], image_size: int) -> np.ndarray | None:
    """Decode a baseline RGB or grayscale JPEG with simplejpeg, at Pillow's draft scale.

    The same libjpeg-turbo decode, DCT scaling and upsampling as Pillow's ``draft`` and
    ``load`` (the tests check the pixels are equal), in one call that holds the GIL for
    microseconds, where Pillow's Python holds it for about a third of a 224 px decode; two
    decoding threads then really use two cores.

    Returns:
        The RGB array at the scaled size, or None when simplejpeg cannot decode the file
        (the caller then decodes it with Pillow, whose errors name the problem).
    """
    scale = draft_scale(size, image_size)
    try:
        return simplejpeg.decode_jpeg(
            data,
            colorspace="RGB",
            # The smallest DCT scale giving at least this size is exactly 1/scale.
            min_width=-(-size[0] // scale),
            min_height=-(-size[1] // scale),
        )
    except Exception:  # anything simplejpeg refuses goes through Pillow
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
    canvas = Image.new("RGB", (size, size))
    canvas.paste(image, ((size - new_w) // 2, (size - new_h) // 2))
    return canvas


def decode_image(
    value: object,
    image_size: int = DEFAULT_IMAGE_SIZE,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int = DEFAULT_MAX_BYTES,
    with_stats: bool = False,
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

    Returns:
        The decoded image and its metadata.

    Raises:
        ImageError: for anything that is not a usable image; the message names
            the problem and the fix.
    """
    data = to_image_bytes(value, max_bytes=max_bytes)
    image = _decode_plain_jpeg(data, image_size, max_pixels) or _decode_with_pillow(
        data, image_size, max_pixels
    )
    if with_stats:
        image.add_pixel_stats()
    return image


def _decode_plain_jpeg(data: bytes, image_size: int, max_pixels: int) -> FundusImage | None:
    """The fast path: an upright RGB or grayscale JPEG, read and decoded without Pillow.

    Returns:
        The image, or None when it needs Pillow (another format or mode, EXIF rotation,
        anything simplejpeg refuses).
    """
    if not data.startswith(b"\xff\xd8"):
        return None
    header = _plain_jpeg_header(data)
    if header is None or header.orientation != 1:
        return None
    _check_size(header.width, header.height, max_pixels)
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


def _decode_with_pillow(data: bytes, image_size: int, max_pixels: int) -> FundusImage:
    """Decode any format and mode Pillow reads, applying EXIF orientation."""
    image = _open(data, max_pixels)
    source_format = image.format or "unknown"
    source_mode = image.mode
    width, height = image.size
    jpeg_quality = estimate_jpeg_quality(image) if source_format == "JPEG" else None
    try:
        orientation = image.getexif().get(_EXIF_ORIENTATION, 1)
        if orientation in (5, 6, 7, 8):
            width, height = height, width
        if source_format == "JPEG":
            # DCT-domain downscaling: decode at 1/2, 1/4 or 1/8 scale, never below the target.
            image.draft("RGB", (image_size, image_size))
        if orientation in (2, 3, 4, 5, 6, 7, 8):
            image = ImageOps.exif_transpose(image)
        else:
            image.load()  # as exif_transpose would, without reading the EXIF again or a copy
        image = _to_rgb(image)
        pixels = np.asarray(_fit_square(image, image_size), dtype=np.uint8)
    except (OSError, ValueError, SyntaxError, EOFError, IndexError, KeyError) as exc:
        raise ImageError(
            f"image data is truncated or corrupt ({exc}); send the complete, unmodified file"
        ) from None
    return FundusImage(
        pixels=pixels,
        width=width,
        height=height,
        format=source_format,
        mode=source_mode,
        byte_size=len(data),
        stats={} if jpeg_quality is None else {"img_jpeg_quality": jpeg_quality},
    )


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


def compute_image_stats(pixels: np.ndarray | Image.Image) -> dict[str, float]:
    """Summarise an RGB image for monitoring: no pixels leave this function.

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
    luma = np.asarray(gray, dtype=np.float32)
    laplacian = (
        luma[:-2, 1:-1] + luma[2:, 1:-1] + luma[1:-1, :-2] + luma[1:-1, 2:] - 4.0 * luma[1:-1, 1:-1]
    )
    colour = ImageStat.Stat(image)
    gray_stat = ImageStat.Stat(gray)
    return {
        "img_brightness": float(gray_stat.mean[0]),
        "img_contrast": float(gray_stat.stddev[0]),
        "img_sharpness": float(laplacian.var()),
        "img_mean_r": float(colour.mean[0]),
        "img_mean_g": float(colour.mean[1]),
        "img_mean_b": float(colour.mean[2]),
    }

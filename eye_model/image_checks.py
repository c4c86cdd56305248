"""Which image files are opened, and the checks that refuse damaged ones.

Pillow reads some forty formats; eye-model opens six (:data:`ACCEPTED_FORMATS`), by an
allow-list passed to ``Image.open``, so no other format's parser ever sees a request and
no decoder that runs an external program (EPS → Ghostscript) is reachable. Damage is
found with the decoders' own signals: libjpeg's "corrupt data" warnings (simplejpeg's
strict mode), the CRC of every PNG chunk, Pillow's truncation errors (its
``LOAD_TRUNCATED_IMAGES`` stays off).
"""

from __future__ import annotations

import struct
import warnings
import zlib

import numpy as np
import simplejpeg
from PIL import Image, ImageFile

#: The formats opened, as Pillow names them (a multi-picture JPEG opens as "MPO").
ACCEPTED_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "BMP", "TIFF", "WEBP", "GIF")
#: How errors name the accepted formats.
ACCEPTED_TEXT = "JPEG, PNG, BMP, TIFF, WebP or GIF"

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# libjpeg's warning about bytes skipped between markers: the pixels are all there.
_HARMLESS_JPEG_WARNING = "extraneous bytes before marker"
# simplejpeg's colour space to decode a JPEG of each colour space in, when verifying it.
_VERIFY_COLORSPACE = {"Gray": "GRAY", "CMYK": "CMYK", "YCCK": "CMYK"}


class ImageError(ValueError):
    """An image that cannot be used; the message names the problem and the fix."""


def check_truncated_images_refused() -> None:
    """Refuse to decode anything while Pillow is set to fill truncated images with grey.

    Pillow's ``LOAD_TRUNCATED_IMAGES`` is off by default; some library turning it on in
    this process would make a half file score as if it were whole.

    Raises:
        ImageError: when the setting is on.
    """
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        raise ImageError(
            "image was not decoded: this process has Pillow's LOAD_TRUNCATED_IMAGES turned "
            "on, which would score truncated files; turn it off and send the image again"
        )


def is_jpeg_corruption(message: str) -> bool:
    """Whether a libjpeg message (simplejpeg's strict mode) says data is missing or damaged."""
    text = message.lower()
    if _HARMLESS_JPEG_WARNING in text:
        return False
    return "corrupt jpeg data" in text or "premature end" in text or "bogus" in text


def jpeg_damage(message: str) -> ImageError:
    """The error for a JPEG whose decoder reported damage."""
    return ImageError(
        f"image data is truncated or corrupt (JPEG decoder: {message}); "
        "send the complete, unmodified file"
    )


def verify_jpeg(data: bytes) -> None:
    """Decode a JPEG at 1/8 scale in libjpeg's strict mode, to find damage Pillow ignores.

    Pillow's JPEG decoder fills missing data with grey and says nothing, even for a file
    cut in half with an end marker appended. The fast path decodes strictly anyway; this
    checks the JPEGs that Pillow decodes (EXIF-rotated, CMYK, multi-picture).

    Raises:
        ImageError: when libjpeg reports missing or corrupt data.
    """
    try:
        colorspace = _VERIFY_COLORSPACE.get(simplejpeg.decode_jpeg_header(data)[2], "RGB")
        simplejpeg.decode_jpeg(data, colorspace=colorspace, min_factor=8)
    except ValueError as exc:
        if is_jpeg_corruption(str(exc)):
            raise jpeg_damage(str(exc)) from None
    except Exception:  # what simplejpeg cannot read at all, Pillow judges
        pass


def verify_png(data: bytes) -> None:
    """Check every chunk of a PNG is complete and matches its CRC, up to ``IEND``.

    Pillow skips the CRC of image data chunks, so a flipped byte there decodes to wrong
    pixels; a file cut short and given a new ``IEND`` decodes with its end missing.
    zlib's CRC runs at gigabytes per second: a few milliseconds for the largest file.

    Raises:
        ImageError: for a cut chunk, a CRC mismatch or a missing ``IEND``.
    """
    view = memoryview(data)
    pos, end = len(_PNG_SIGNATURE), len(data)
    while pos + 12 <= end:
        (length,) = struct.unpack_from(">I", data, pos)
        stop = pos + 8 + length
        if stop + 4 > end:
            break
        kind = bytes(view[pos + 4 : pos + 8])
        (expected,) = struct.unpack_from(">I", data, stop)
        if zlib.crc32(view[pos + 4 : stop]) != expected:
            name = kind.decode("latin-1") if kind.isalpha() else "a"
            raise ImageError(
                f"image data is corrupt (the PNG {name} chunk fails its CRC check); "
                "send the complete, unmodified file"
            )
        if kind == b"IEND":
            return
        pos = stop + 4
    raise ImageError(
        "image data is truncated (the PNG ends inside a chunk or has no IEND chunk); "
        "send the complete, unmodified file"
    )


def check_finite(image: Image.Image) -> None:
    """Refuse a floating-point image holding NaN or infinite values.

    Raises:
        ImageError: naming how many pixels are not finite.
    """
    if image.mode != "F":
        return
    array = np.asarray(image)
    finite = np.isfinite(array)
    if not finite.all():
        bad = int(array.size - np.count_nonzero(finite))
        raise ImageError(
            f"image has {bad:,} of {array.size:,} pixels that are not numbers (NaN or "
            "infinite); send a photograph whose pixel values are all finite"
        )


def header_size(data: bytes) -> tuple[int, int] | None:
    """The width and height a PNG, GIF, BMP, WebP or JPEG header states, without Pillow.

    Used to explain a file Pillow would not open: Pillow refuses a 0x0 header as
    "cannot identify image file".
    """
    try:
        if data.startswith(_PNG_SIGNATURE) and data[12:16] == b"IHDR":
            return struct.unpack_from(">II", data, 16)
        if data[:6] in (b"GIF87a", b"GIF89a"):
            return struct.unpack_from("<HH", data, 6)
        if data.startswith(b"BM"):
            if struct.unpack_from("<I", data, 14)[0] == 12:  # OS/2 core header
                return struct.unpack_from("<HH", data, 18)
            width, height = struct.unpack_from("<ii", data, 18)
            return abs(width), abs(height)
        if data.startswith(b"RIFF") and data[8:12] == b"WEBP":
            return _webp_size(data)
        if data.startswith(b"\xff\xd8"):
            return _jpeg_frame_size(data)
    except struct.error:
        return None
    return None


def _webp_size(data: bytes) -> tuple[int, int] | None:
    kind = data[12:16]
    if kind == b"VP8X":
        width = int.from_bytes(data[24:27], "little") + 1
        height = int.from_bytes(data[27:30], "little") + 1
        return width, height
    if kind == b"VP8 ":
        width, height = struct.unpack_from("<HH", data, 26)
        return width & 0x3FFF, height & 0x3FFF
    if kind == b"VP8L":
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    return None


def _jpeg_frame_size(data: bytes) -> tuple[int, int] | None:
    pos = 2
    while pos + 4 <= len(data) and data[pos] == 0xFF:
        marker = data[pos + 1]
        if marker == 0xFF:
            pos += 1
            continue
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            height, width = struct.unpack_from(">HH", data, pos + 5)
            return width, height
        if marker == 0xDA:
            return None
        pos += 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
    return None


def refused_format(data: bytes) -> str | None:
    """The name of the format Pillow recognises in ``data`` when it is not an accepted one.

    Only each format's signature test runs (a few byte comparisons): no parser of a
    refused format ever reads the file.
    """
    if data.endswith(b"TRUEVISION-XFILE.\0"):  # TGA has a signature only at its end
        return "TGA"
    Image.init()
    prefix = data[:16]
    for name, (_, accept) in Image.OPEN.items():
        if name in ACCEPTED_FORMATS or name == "MPO" or accept is None:
            continue
        if name == "CUR" and prefix[4:6] == b"\0\0":  # no cursor: an old TGA starts alike
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if accept(prefix):
                    return name
        except Exception:  # a signature test that fails says "not this one"
            continue
    return None


def unopened_error(data: bytes) -> ImageError:
    """The error for a file that no accepted format's reader opened, saying what it is.

    A header stating 0 pixels, a format Pillow knows but eye-model does not accept, a
    PDF, an archive, text: named, without echoing any of the file.
    """
    size = header_size(data)
    if size is not None and 0 in size:
        return zero_size_error(*size)
    name = refused_format(data)
    if name is not None:
        return ImageError(
            f"image is in the {name} format, which is not accepted; send a {ACCEPTED_TEXT} "
            "fundus photograph"
        )
    return ImageError(
        f"image is not a readable image file ({_describe_unknown(data)}); send a "
        f"{ACCEPTED_TEXT} fundus photograph"
    )


def zero_size_error(width: int, height: int) -> ImageError:
    """The error for a header that says the image has no pixels."""
    return ImageError(
        f"image header says the image is {width}x{height} px, an image with no pixels; "
        "send the complete, unmodified image file"
    )


def _describe_unknown(data: bytes) -> str:
    """Say what an unreadable payload looks like, without echoing it."""
    head = data[:8]
    if head.startswith(b"%PDF"):
        return "it looks like a PDF document"
    if head.startswith(b"PK\x03\x04"):
        return "it looks like a ZIP archive"
    if head.startswith((b"%!PS", b"\xc5\xd0\xd3\xc6")):
        return "it looks like a PostScript document"
    try:
        data[:256].decode("utf-8")
    except UnicodeDecodeError:
        return f"{len(data):,} bytes of unknown format"
    return "it looks like text"

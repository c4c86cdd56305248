"""Image makers shared by the tests: every image a test needs is generated here."""

from __future__ import annotations

import base64
import io
import struct
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw


def draw_fundus_like(size: int = 256, seed: int = 0) -> Image.Image:
    """A quick fundus-like RGB picture: dark surround, orange disc, bright optic disc."""
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", (size, size))
    draw = ImageDraw.Draw(image)
    margin = size // 20
    tone = tuple(int(v) for v in rng.integers([170, 60, 20], [220, 100, 50]))
    draw.ellipse((margin, margin, size - margin, size - margin), fill=tone)
    cx = int(size * rng.uniform(0.3, 0.7))
    radius = size // 12
    draw.ellipse(
        (cx - radius, size // 2 - radius, cx + radius, size // 2 + radius), fill=(245, 225, 160)
    )
    for _ in range(6):
        x0, y0 = cx, size // 2
        x1, y1 = (int(v) for v in rng.integers(margin * 2, size - margin * 2, 2))
        draw.line((x0, y0, x1, y1), fill=(120, 20, 15), width=max(1, size // 100))
    noise = rng.normal(0, 4, (size, size, 3))
    return Image.fromarray(np.clip(np.asarray(image, np.float32) + noise, 0, 255).astype(np.uint8))


def encode(image: Image.Image, fmt: str = "JPEG", **params: object) -> bytes:
    """Encode a Pillow image to bytes in ``fmt``."""
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def b64(data: bytes) -> str:
    """Base64 text of ``data``."""
    return base64.b64encode(data).decode("ascii")


def png_header_only(width: int, height: int) -> bytes:
    """A PNG claiming ``width`` x ``height`` with almost no data: a decompression bomb."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1024)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def jpeg_with_orientation(image: Image.Image, orientation: int) -> bytes:
    """A JPEG carrying an EXIF orientation tag."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(image, "JPEG", quality=95, exif=exif.tobytes())


class TrackingServer:
    """A real `mlflow server` (SQLite backend, proxied artifacts) on a loopback port.

    It can be stopped and started again on the same port and store, as an outage would.
    """

    def __init__(self, home: Path, port: int | None = None) -> None:
        from eye_model.stack import find_free_port

        self.home = home
        self.port = port or find_free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = None

    def start(self) -> TrackingServer:
        from eye_model.stack import build_tracking_command, start_process, wait_for_http

        command = build_tracking_command(
            backend_store_uri=f"sqlite:///{self.home / 'mlflow.db'}",
            artifacts_destination=str(self.home / "artifacts"),
            port=self.port,
        )
        self.process = start_process(command, log_path=self.home / "tracking.log")
        wait_for_http(f"{self.url}/health", timeout=120, process=self.process)
        return self

    def stop(self) -> None:
        from eye_model.stack import stop_process

        if self.process is not None:
            stop_process(self.process)
            self.process = None


def sixteen_bit_rgba_png(side: int) -> bytes:
    """A ``side`` x ``side`` 16-bit RGBA PNG, mostly flat: tiny on the wire, huge decoded.

    At 6300 px it is about 0.5 MB encoded and 318 MB decoded (8 bytes per pixel), the
    image of issue 15's memory and timeout findings. Rows are written one at a time, so
    making it holds one row, not the image.
    """

    def chunk(kind: bytes, payload: bytes) -> bytes:
        crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)

    background = np.zeros((side, 4), ">u2")
    background[:, 3] = 65535
    field = background.copy()
    field[side // 6 : side - side // 6, :3] = (52000, 24000, 9000)
    rows = (b"\x00" + background.tobytes(), b"\x00" + field.tobytes())
    compressor = zlib.compressobj(6)
    parts = []
    for y in range(side):
        parts.append(compressor.compress(rows[side // 6 <= y < side - side // 6]))
    parts.append(compressor.flush())
    ihdr = struct.pack(">IIBBBBB", side, side, 16, 6, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", b"".join(parts))
        + chunk(b"IEND", b"")
    )


@contextmanager
def serving_without_tracking(model_path: Path, log: Path) -> Iterator[str]:
    """`mlflow models serve` of a model folder on a free port, telemetry off; yields its URL.

    Telemetry has its own tests: these servers must not write into a test's store. The
    server is always stopped, and must be gone afterwards.
    """
    import pytest

    from eye_model.stack import (
        build_serve_command,
        find_free_port,
        server_environment,
        start_process,
        stop_process,
        wait_for_http,
    )

    port = find_free_port()
    command = build_serve_command(str(model_path), port=port, env_manager="local")
    env = server_environment({"ENABLE_MLFLOW_TRACKING": "false"})
    process = start_process(command, log_path=log, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{url}/ping", timeout=180, process=process)
        yield url
    except RuntimeError:
        pytest.fail(f"model server did not start:\n{log.read_text()[-3000:]}")
    finally:
        stop_process(process)
    assert process.poll() is not None

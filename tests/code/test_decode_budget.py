"""The decoding limits: a worker's memory budget, a request's pixel budget and time limit."""

from __future__ import annotations

import threading
import time

import pytest

from eye_model.decode_budget import BudgetError, MemoryBudget, RequestGate, release_memory
from eye_model.preprocess import ImageError, decode_image
from tests.helpers import draw_fundus_like, encode

MB = 1024 * 1024


def test_large_decodes_wait_for_each_other_within_the_budget() -> None:
    budget = MemoryBudget(100 * MB, small=MB)
    running, most = 0, 0
    lock = threading.Lock()

    def decode() -> None:
        nonlocal running, most
        with budget.hold(40 * MB):
            with lock:
                running += 1
                most = max(most, running)
            time.sleep(0.05)
            with lock:
                running -= 1

    threads = [threading.Thread(target=decode) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert most == 2  # two 40 MB decodes fit in 100 MB, a third waits
    assert budget.peak == 80 * MB and budget.held == 0


def test_a_decode_larger_than_the_budget_runs_alone_and_small_ones_pass() -> None:
    budget = MemoryBudget(10 * MB, small=MB)
    with budget.hold(50 * MB):
        assert budget.held == 10 * MB
        with budget.hold(MB - 1):  # small decodes never wait
            pass
        waiting = budget.hold(2 * MB, timeout=0.05)
        with pytest.raises(BudgetError, match="busy decoding other large images"), waiting:
            pass
    assert budget.held == 0


def test_memory_is_given_back_to_the_system() -> None:
    assert release_memory() is True  # glibc: malloc_trim is called


def test_request_pixel_budget_and_time_limit_name_their_settings() -> None:
    image = encode(draw_fundus_like(200, seed=1), "PNG")
    gate = RequestGate(max_pixels=100_000, pixels_setting="EYE_MODEL_MAX_REQUEST_PIXELS")
    decode_image(image, 64, gate=gate)  # 40,000 pixels
    decode_image(image, 64, gate=gate)
    assert gate.used_pixels == 80_000
    with pytest.raises(ImageError, match=r"more than 0.1 MP .*EYE_MODEL_MAX_REQUEST_PIXELS"):
        decode_image(image, 64, gate=gate)
    late = RequestGate(deadline=time.monotonic() - 1, timeout_text="30 s")
    with pytest.raises(ImageError, match=r"reached its time limit \(30 s\)"):
        decode_image(image, 64, gate=late)


def test_a_jpeg_counts_the_pixels_it_decodes_at_draft_scale() -> None:
    gate = RequestGate(max_pixels=10**9)
    decode_image(encode(draw_fundus_like(2000, seed=2), "JPEG"), 224, gate=gate)
    assert gate.used_pixels == 250 * 250  # decoded at 1/8 scale


def test_a_sixteen_bit_source_counts_its_own_bytes_per_pixel() -> None:
    import io
    import struct
    import zlib

    from PIL import Image

    from eye_model.preprocess import decoded_bytes

    raw = b"".join(b"\x00" + b"\x80\x00" * 4 * 300 for _ in range(200))

    def chunk(kind: bytes, payload: bytes) -> bytes:
        crc = zlib.crc32(kind + payload)
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", 300, 200, 16, 6, 0, 0, 0)  # 16-bit RGBA
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw))
    png += chunk(b"IEND", b"")
    assert decoded_bytes(Image.open(io.BytesIO(png))) == 300 * 200 * 8
    assert decode_image(png, 64).pixels.shape == (64, 64, 3)

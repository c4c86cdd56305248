"""Limits on decoding: a worker's memory budget, a request's pixel budget and time limit.

A 6300x6300 16-bit RGBA PNG is 320 KB on the wire and 317 MB once decoded. Twelve such
requests at once would each decode their image in the same moment; the worker's
:class:`MemoryBudget` makes large decodes take turns instead, and gives the memory back
to the system (glibc ``malloc_trim``) when the last one ends. A :class:`RequestGate`
holds one request to its pixel budget and its time limit, so a request inside the
documented limits is answered before the scoring server gives up on it (HTTP 504).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import threading
import time
from collections.abc import Callable, Iterator

from eye_model.image_checks import ImageError

#: A decode smaller than this (in decoded bytes) does not wait for the memory budget:
#: with at most eight decoding threads such decodes together hold at most 128 MB.
SMALL_DECODE_BYTES = 16 * 1024 * 1024

_NOTHING = contextlib.nullcontext()


class BudgetError(ImageError):
    """A row is refused by a limit of its request or worker; the message names the limit."""


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None where the C library has none (musl, macOS)."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


def release_memory() -> bool:
    """Give the free memory of every malloc arena back to the system.

    glibc keeps freed blocks of large decodes (its mmap threshold rises to 32 MB after
    the first large free, so Pillow's 16 MB blocks come from the heap) and a worker that
    decoded a burst of giant images kept gigabytes it no longer used.

    Returns:
        True when memory was trimmed (glibc), False where there is nothing to call.
    """
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


class MemoryBudget:
    """A per-worker budget of decoded bytes, held by each large decode while it runs.

    Like a semaphore counted in bytes: a decode of ``n`` bytes waits until ``n`` bytes
    are free. A decode larger than the whole budget waits until nothing else holds any,
    then runs alone. When the last large decode ends, the memory is given back to the
    system (:func:`release_memory`).

    Args:
        limit: bytes that large decodes may hold together.
        small: decodes below this many bytes pass without waiting.
    """

    def __init__(self, limit: int, *, small: int = SMALL_DECODE_BYTES) -> None:
        self.limit = max(1, limit)
        self.small = small
        self._held = 0
        self._holders = 0
        self._condition = threading.Condition()
        #: Most bytes held at once, for tests and benchmarks.
        self.peak = 0

    @property
    def held(self) -> int:
        """Bytes held by the decodes running now."""
        with self._condition:
            return self._held

    def hold(
        self, nbytes: int, timeout: float | None = None
    ) -> contextlib.AbstractContextManager[None]:
        """Hold ``nbytes`` of the budget for the duration of a ``with`` block.

        Args:
            nbytes: decoded bytes of the image about to be decoded.
            timeout: most seconds to wait for the budget (None: no limit).

        Raises:
            BudgetError: the budget did not free up within ``timeout``.
        """
        if nbytes < self.small:
            return _NOTHING  # the common case costs no generator
        return self._hold(min(nbytes, self.limit), timeout)

    @contextlib.contextmanager
    def _hold(self, cost: int, timeout: float | None) -> Iterator[None]:
        with self._condition:
            if not self._condition.wait_for(lambda: self._held + cost <= self.limit, timeout):
                raise BudgetError(
                    "image was not decoded: the server was busy decoding other large images "
                    "until this request's time limit; retry later or send smaller images"
                )
            self._held += cost
            self._holders += 1
            self.peak = max(self.peak, self._held)
        try:
            yield
        finally:
            with self._condition:
                self._held -= cost
                self._holders -= 1
                last = self._holders == 0
                self._condition.notify_all()
            if last:
                release_memory()


class RequestGate:
    """One request's limits: a budget of decoded pixels and a time limit to start decodes.

    Rows are admitted in the order their headers are read (the order of the rows, give or
    take the decoding threads); a row past a limit is answered with an error naming it.

    Args:
        max_pixels: decoded pixels the whole request may use (None: no limit).
        deadline: ``time.monotonic()`` after which no decode starts (None: no limit).
        memory: the worker's memory budget (None: no limit).
        pixels_setting: the variable that sets ``max_pixels``, named in the error.
        timeout_text: how the time limit is described in its error.
    """

    def __init__(
        self,
        *,
        max_pixels: int | None = None,
        deadline: float | None = None,
        memory: MemoryBudget | None = None,
        pixels_setting: str = "",
        timeout_text: str = "",
    ) -> None:
        self.max_pixels = max_pixels
        self.deadline = deadline
        self.memory = memory
        self.pixels_setting = pixels_setting
        self.timeout_text = timeout_text
        self._used = 0
        self._lock = threading.Lock()

    @property
    def used_pixels(self) -> int:
        """Decoded pixels admitted so far."""
        return self._used

    def _remaining_time(self) -> float | None:
        if self.deadline is None:
            return None
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise BudgetError(
                f"image was not decoded: the request reached its time limit "
                f"({self.timeout_text}); send fewer or smaller images per request"
            )
        return remaining

    def admit(self, pixels: int, nbytes: int) -> contextlib.AbstractContextManager[None]:
        """Admit one decode of ``pixels`` pixels (``nbytes`` bytes) for a ``with`` block.

        The pixel budget and the time limit are checked now; the memory budget is
        waited for when the ``with`` block is entered.

        Raises:
            BudgetError: the request is past its time limit or pixel budget, or the
                memory budget did not free up before the time limit.
        """
        remaining = self._remaining_time()
        if self.max_pixels is not None:
            with self._lock:
                if self._used + pixels > self.max_pixels:
                    raise BudgetError(
                        f"image was not decoded: the request's images add up to more than "
                        f"{self.max_pixels / 1e6:,g} MP of decoded pixels "
                        f"({self.pixels_setting}); send the remaining images in another "
                        "request"
                    )
                self._used += pixels
        if self.memory is None:
            return _NOTHING
        return self.memory.hold(nbytes, remaining)

"""The recorder: takes scored rows off the request path and writes them to the local log.

:meth:`Recorder.record` only puts the rows on an in-memory queue (microseconds, never
raising). A writer thread computes the image statistics, builds the records, numbers them
through the session metrics and appends them to the inference log.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Sequence
from typing import Any

from eye_model.telemetry.inference_log import InferenceLog
from eye_model.telemetry.records import ModelIdentity, build_records
from eye_model.telemetry.session import SessionMetrics

logger = logging.getLogger(__name__)

#: The writer thread starts this long after a request is queued, so it never competes with
#: the response for the GIL (measured: about 0.7 ms of latency per request otherwise).
WRITE_DELAY_SECONDS = 0.02

#: One queued request: rows, request id, image ids (or None), epoch seconds.
_Item = tuple[Sequence[Any], str, Sequence[object] | None, float]


class Recorder:
    """Queues the rows of each request and writes them, in a thread, to the local log."""

    def __init__(
        self,
        identity: ModelIdentity,
        log: InferenceLog,
        session: SessionMetrics,
        *,
        log_image_ids: bool = False,
    ) -> None:
        """Prepare the recorder; :meth:`start` starts its writer thread.

        Args:
            identity: the served model, written in every record.
            log: where records go.
            session: counts and numbers the records.
            log_image_ids: keep the client's ``image_id`` in records.
        """
        self.identity = identity
        self.log = log
        self.session = session
        self.log_image_ids = log_image_ids
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._writer = threading.Thread(
            target=self._write_loop, name="eye-model-telemetry-writer", daemon=True
        )

    def start(self) -> None:
        """Start the writer thread."""
        self._writer.start()

    def stop(self, timeout: float) -> None:
        """Write everything queued so far, then end the writer thread (waits ``timeout`` s)."""
        self._queue.put(None)
        self._writer.join(timeout)

    def record(
        self, rows: Sequence[Any], *, request_id: str, image_ids: Sequence[object] | None
    ) -> None:
        """Queue the rows of one request (called from ``predict``: a queue put, never raising).

        The rows still hold their pixels; the writer thread computes the image statistics,
        builds the records and drops the pixels, all off the request path.
        """
        try:
            ids = image_ids if self.log_image_ids else None
            self._queue.put((rows, request_id, ids, time.time()))
        except Exception:  # telemetry must never fail a prediction
            logger.exception("telemetry could not record a request")

    def _write_loop(self) -> None:
        while True:
            items = [self._queue.get()]
            if items[0] is not None:
                # Start a moment after the request, so that this thread's work (and its
                # hold on the GIL) does not delay the response being sent; a busy server
                # gets its records written in batches.
                time.sleep(WRITE_DELAY_SECONDS)
            with contextlib.suppress(queue.Empty):
                while True:
                    items.append(self._queue.get_nowait())
            for item in items:
                if item is None:
                    return
                self._write(*item)

    def _write(
        self, rows: Sequence[Any], request_id: str, image_ids: Sequence[object] | None, stamp: float
    ) -> None:
        """Compute the image statistics, build the records, number and append them."""
        try:
            for row in rows:
                image = row.image
                if image is not None and image.pixels is not None:
                    image.add_pixel_stats()
                    image.pixels = None
            batch = build_records(
                rows,
                request_id=request_id,
                identity=self.identity,
                image_ids=image_ids,
                timestamp=stamp,
            )
            self.session.count(batch)  # numbers each record: its "count" is the metric step
            self.log.append(batch)
        except Exception:
            # One bad item must not stop the thread: log it and go on with the next.
            logger.exception("telemetry could not write a request's records locally")

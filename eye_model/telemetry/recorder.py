"""The recorder: writes each request's records to the local log before ``predict`` returns.

:meth:`Recorder.record` runs in the request thread and never raises: it computes the image
statistics and drops the pixels (:func:`~eye_model.telemetry.records.release_pixels`,
about 0.3 ms for one 224 px image), builds the records, appends them to the open log
file (flushed to the OS: a prediction the client receives survives a killed process),
then puts them on a bounded in-memory queue for the session metrics.

A metrics thread wakes every :data:`TICK_SECONDS`: it counts the queued records into the
session metrics and runs the session's housekeeping (sealing by age, the backlog limit,
the delivery warning), none of which waits for the network. When the queue is full (the
metrics thread starved of CPU), the oldest queued records are left out of the session
metrics, counted in :attr:`Recorder.dropped_records` and reported in a rate-limited
warning; they are still in the inference log, and a request never waits.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from eye_model.telemetry.inference_log import InferenceLog
from eye_model.telemetry.records import ModelIdentity, build_records, release_pixels
from eye_model.telemetry.session import SessionMetrics

logger = logging.getLogger(__name__)

#: Seconds between two rounds of the metrics thread.
TICK_SECONDS = 0.25
#: Most records waiting for the session metrics; the oldest are dropped beyond.
MAX_QUEUED_RECORDS = 20_000
#: Seconds between two "queue full" warnings.
QUEUE_WARN_EVERY_SECONDS = 30.0


class Recorder:
    """Writes the records of each request to the log, and counts them in a thread.

    Attributes:
        dropped_records: records left out of the session metrics because the queue was full.
    """

    def __init__(
        self,
        identity: ModelIdentity,
        log: InferenceLog,
        session: SessionMetrics,
        *,
        log_image_ids: bool = False,
        max_queued: int = MAX_QUEUED_RECORDS,
        housekeeping: Callable[[], None] | None = None,
    ) -> None:
        """Prepare the recorder; :meth:`start` starts its metrics thread.

        Args:
            identity: the served model, written in every record.
            log: where records go.
            session: counts the records.
            log_image_ids: keep the client's ``image_id`` in records.
            max_queued: most records waiting for the session metrics.
            housekeeping: called by the metrics thread every round (must not raise).
        """
        self.identity = identity
        self.log = log
        self.session = session
        self.log_image_ids = log_image_ids
        self.housekeeping = housekeeping
        self.dropped_records = 0
        self._reported_drops = 0
        self._last_drop_warning = -float("inf")
        self._queue: collections.deque[dict[str, Any]] = collections.deque(maxlen=max_queued)
        self._queue_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name="eye-model-telemetry-metrics", daemon=True
        )

    def start(self) -> None:
        """Start the metrics thread."""
        self._thread.start()

    def stop(self, timeout: float) -> None:
        """Count what is queued, then end the metrics thread (waits at most ``timeout`` s)."""
        self._stop.set()
        if self._thread.ident is not None:
            self._thread.join(max(timeout, 0.0))

    def record(
        self, rows: Sequence[Any], *, request_id: str, image_ids: Sequence[object] | None
    ) -> None:
        """Write the records of one request to the log (called from ``predict``; never raises).

        The rows' pixels are released here: nothing of the image outlives the call.
        """
        try:
            release_pixels(rows)
            records = build_records(
                rows,
                request_id=request_id,
                identity=self.identity,
                image_ids=image_ids if self.log_image_ids else None,
                timestamp=time.time(),
            )
        except Exception:  # telemetry must never fail a prediction
            logger.exception("telemetry could not build a request's records")
            return
        try:
            self.log.append(records)
        except Exception:
            logger.exception("telemetry could not write a request's records locally")
        self.enqueue(records)

    def enqueue(self, records: Sequence[dict[str, Any]]) -> None:
        """Queue records for the session metrics, dropping the oldest when full."""
        queue = self._queue
        with self._queue_lock:
            assert queue.maxlen is not None
            overflow = len(queue) + len(records) - queue.maxlen
            if overflow > 0:
                self.dropped_records += min(overflow, len(queue) + len(records))
            queue.extend(records)  # a deque with maxlen drops from the left

    @property
    def queued(self) -> int:
        """Records waiting for the session metrics."""
        return len(self._queue)

    def _drain(self) -> None:
        with self._queue_lock:
            batch = list(self._queue)
            self._queue.clear()
        if batch:
            self.session.count(batch)
        self._warn_about_drops()

    def _warn_about_drops(self) -> None:
        dropped = self.dropped_records
        now = time.monotonic()
        if dropped == self._reported_drops or now - self._last_drop_warning < (
            QUEUE_WARN_EVERY_SECONDS
        ):
            return
        logger.warning(
            "telemetry queue full: left %d of the oldest records out of the session metrics "
            "(dropped_records=%d in this session); they are still in the inference log",
            dropped - self._reported_drops,
            dropped,
        )
        self._reported_drops = dropped
        self._last_drop_warning = now

    def _run(self) -> None:
        while True:
            stopping = self._stop.wait(TICK_SECONDS)
            try:
                self._drain()
                if self.housekeeping is not None:
                    self.housekeeping()
            except Exception:  # one bad round must not stop the thread
                logger.exception("telemetry metrics round failed")
            if stopping:
                return

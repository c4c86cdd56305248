"""Adaptive batching across concurrent requests: one network call for the rows of many.

MLflow's scoring server runs each request's ``predict`` in its own thread. With many
clients sending one image each, the network would run at batch size 1, far below its
batch-32 speed. A :class:`NetworkBatcher` (one per loaded model) gathers the decoded rows
that concurrent requests hand it and runs them together, up to ``max_batch`` rows per call.

There is no batching thread: the request thread that finds the network free runs the next
batch itself (its own rows and whoever else's are queued, oldest first), then wakes the
requests whose rows are done and the owner of the oldest rows still queued, who runs the
batch after. A request alone on an idle server therefore runs at once, in its own thread,
with no hand-off.

A part-filled batch waits (at most ``max_wait_s``) for as many requests as were open at
once while the previous batch ran. With 8 clients posting one image each, the requests of
one batch come back while the other half runs, so batches would otherwise alternate
between about 4 and 4 rows; waiting lets them merge. A lone client never waits: it was
the only open request.

Each request gets exactly its own rows back, in its own order: rows are objects the batch
function fills in place. A failing batch fails only the rows in it (``fail_batch``).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

logger = logging.getLogger(__name__)

Row = TypeVar("Row")

#: The error of rows refused because the model is shutting down.
SHUTDOWN_ERROR = "the model server is shutting down and did not score this image; retry later"


def network_error(exc: BaseException) -> str:
    """The error of each row of a batch the network failed on."""
    return f"the model failed on this image ({type(exc).__name__}); retry later"


@dataclass
class _Ticket(Generic[Row]):
    """Rows one request handed over in one call, and how far they got."""

    rows: Sequence[Row]
    wake: threading.Condition
    #: Rows taken into a batch so far (the next batch starts at this index).
    taken: int = 0
    #: Rows whose batch has ended.
    finished: int = 0

    @property
    def done(self) -> bool:
        return self.finished >= len(self.rows)


@dataclass
class BatcherStats:
    """What a batcher has done (for tests and benchmarks)."""

    batches: int = 0
    rows: int = 0
    failed_batches: int = 0
    #: Rows per batch, the most recent last (at most 10,000 kept).
    sizes: deque[int] = field(default_factory=lambda: deque(maxlen=10_000))

    @property
    def mean_batch(self) -> float:
        """Mean rows per network call so far (0.0 before the first)."""
        return self.rows / self.batches if self.batches else 0.0


class NetworkBatcher(Generic[Row]):
    """Runs the rows of concurrent requests through one batch function, many per call.

    Thread-safe. Args:
        run_batch: scores rows in place (one network call); a failure of the network
            should be reported on the rows themselves, but anything it raises fails
            only the rows of that batch (``fail_batch``).
        fail_batch: marks rows as failed, given the message to show.
        max_batch: most rows per call.
        max_wait_s: longest a batch waits to fill while other requests are decoding.
    """

    def __init__(
        self,
        run_batch: Callable[[list[Row]], None],
        fail_batch: Callable[[Sequence[Row], str], None],
        *,
        max_batch: int = 32,
        max_wait_s: float = 0.0,
    ) -> None:
        self.run_batch = run_batch
        self.fail_batch = fail_batch
        self.max_batch = max(1, max_batch)
        self.max_wait_s = max(0.0, max_wait_s)
        self.stats = BatcherStats()
        self._lock = threading.Lock()
        self._arrival = threading.Condition(self._lock)  # the gathering batch waits here
        self._idle = threading.Condition(self._lock)  # close() waits here
        self._queue: deque[_Ticket[Row]] = deque()
        self._queued_rows = 0
        self._busy = False
        self._gathering = False
        self._closed = False
        #: Requests announced (:meth:`request`) and not yet ended.
        self._open = 0
        #: Announced requests whose rows are handed over and not yet done.
        self._waiting = 0
        #: Most requests open at once since the last batch was gathered.
        self._peak = 0

    # -- the request side -----------------------------------------------------------------

    @contextlib.contextmanager
    def request(self) -> Iterator[Callable[[Sequence[Row]], None]]:
        """Announce a request that will hand over rows; yields its ``score(rows)`` function.

        While a request is open and decoding, a free network waits up to ``max_wait_s`` for
        its rows before running a part-filled batch.
        """
        with self._lock:
            self._open += 1
            self._peak = max(self._peak, self._open)
        try:
            yield self._score_announced
        finally:
            with self._lock:
                self._open -= 1
                if self._gathering:
                    self._arrival.notify()

    def score(self, rows: Sequence[Row]) -> None:
        """Score ``rows`` (in place) with whatever else is queued; returns when they are done."""
        with self.request() as score:
            score(rows)

    def _score_announced(self, rows: Sequence[Row]) -> None:
        if not rows:
            return
        with self._lock:
            if self._closed:
                refused = True
            else:
                refused = False
                ticket: _Ticket[Row] = _Ticket(rows, threading.Condition(self._lock))
                self._queue.append(ticket)
                self._queued_rows += len(rows)
                self._waiting += 1
                if self._gathering:
                    self._arrival.notify()
        if refused:
            self.fail_batch(rows, SHUTDOWN_ERROR)
            return
        try:
            self._serve_until_done(ticket)
        finally:
            with self._lock:
                self._waiting -= 1

    def _serve_until_done(self, ticket: _Ticket[Row]) -> None:
        """Wait for ``ticket``'s rows, running batches (anyone's) whenever the network is free."""
        while True:
            with self._lock:
                while not ticket.done and (self._busy or not self._queue):
                    ticket.wake.wait()
                if ticket.done:
                    return
                self._busy = True
                taken = self._gather_locked()
            self._run(taken)

    def _gather_locked(self) -> list[tuple[_Ticket[Row], int, int]]:
        """Take up to ``max_batch`` queued rows, oldest first, after waiting for stragglers."""
        expected, self._peak = self._peak, self._open
        if self._queued_rows < self.max_batch and self.max_wait_s > 0:
            deadline = time.monotonic() + self.max_wait_s
            self._gathering = True
            try:
                while self._queued_rows < self.max_batch and (
                    self._waiting < expected or self._open > self._waiting
                ):
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._arrival.wait(remaining)
            finally:
                self._gathering = False
        taken: list[tuple[_Ticket[Row], int, int]] = []
        room = self.max_batch
        while room and self._queue:
            head = self._queue[0]
            stop = min(len(head.rows), head.taken + room)
            taken.append((head, head.taken, stop))
            room -= stop - head.taken
            self._queued_rows -= stop - head.taken
            head.taken = stop
            if stop == len(head.rows):
                self._queue.popleft()
        return taken

    def _run(self, taken: list[tuple[_Ticket[Row], int, int]]) -> None:
        """Run one batch outside the lock, then wake its requests and the next leader."""
        batch = [row for ticket, start, stop in taken for row in ticket.rows[start:stop]]
        failed = False
        try:
            self.run_batch(batch)
        except Exception as exc:  # one failing batch costs its rows, never another batch
            failed = True
            logger.exception("the network failed on a batch of %d images", len(batch))
            try:
                self.fail_batch(batch, network_error(exc))
            except Exception:
                logger.exception("could not mark a failed batch")
        finally:
            with self._lock:
                self._busy = False
                self.stats.batches += 1
                self.stats.rows += len(batch)
                self.stats.failed_batches += failed
                self.stats.sizes.append(len(batch))
                for ticket, start, stop in taken:
                    ticket.finished += stop - start
                    if ticket.done:
                        ticket.wake.notify()
                if self._queue:
                    self._queue[0].wake.notify()  # the oldest waiting rows run next
                else:
                    self._idle.notify_all()

    # -- shutdown -------------------------------------------------------------------------

    def close(self, timeout: float = 5.0) -> bool:
        """Refuse new rows; score the queued ones, failing what is left after ``timeout`` s.

        Rows handed over afterwards get :data:`SHUTDOWN_ERROR` at once. Never leaves a
        request waiting: rows not in a batch by ``timeout`` get the same error.

        Returns:
            Whether every queued row was scored within ``timeout``.
        """
        deadline = time.monotonic() + timeout
        with self._lock:
            self._closed = True
            if self._gathering:
                self._arrival.notify()
            while self._queue or self._busy:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._idle.wait(remaining)
            left = list(self._queue)
            self._queue.clear()
            self._queued_rows = 0
        for ticket in left:
            rows = ticket.rows[ticket.taken :]
            try:
                self.fail_batch(rows, SHUTDOWN_ERROR)
            finally:
                with self._lock:
                    ticket.finished += len(rows)
                    ticket.taken = len(ticket.rows)
                    if ticket.done:
                        ticket.wake.notify()
        return not left

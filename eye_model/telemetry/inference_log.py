"""The local inference log: a session's records as JSON-lines files on disk.

Records are appended to ``<session folder>/current.jsonl`` through a handle kept open, and
flushed to the OS before :meth:`InferenceLog.append` returns: a record a client received
survives the process being killed (not the machine losing power: there is no fsync). The
file is sealed into numbered parts (``part-00000.jsonl``, ...) once it holds
``part_records`` records (by the appending thread) or its first record is ``part_seconds``
old (by a timer thread). A part stays pending until it has been delivered to MLflow
(marked by a ``part-NNNNN.shipped`` file beside it). This log is the source of truth:
nothing is lost while the tracking server is away, up to a bounded backlog.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

logger = logging.getLogger(__name__)

#: The file records are appended to until it is sealed.
CURRENT_NAME = "current.jsonl"


def part_number(part: Path) -> int:
    """The number of a part (``part-00042.jsonl`` → 42)."""
    return int(part.name[5:10])


class InferenceLog:
    """The session's local, append-only inference log, sealed into numbered parts.

    Thread-safe: request threads append, a timer thread seals by age and bounds the
    backlog, the shipper reads and marks parts.

    Attributes:
        folder: the session's folder.
        part_records: seal the current file once it holds this many records.
        part_seconds: ... or once its first record is this old (s).
        dropped_records: records dropped by :meth:`enforce_backlog` so far.
    """

    def __init__(self, folder: Path, *, part_records: int = 500, part_seconds: float = 5.0) -> None:
        """Open (and create) the log in ``folder``; numbering goes on after existing parts."""
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.part_records = part_records
        self.part_seconds = part_seconds
        self.dropped_records = 0
        self._lock = threading.Lock()
        self._current = folder / CURRENT_NAME
        self._handle: IO[str] | None = None
        self._records_in_current = 0
        self._opened_at = time.monotonic()
        self._count = 0  # records appended in this session: each record's "count"
        self._part_sizes: dict[Path, int] = {}
        self._shipping: Path | None = None
        existing = sorted(folder.glob("part-*.jsonl"))
        self._next_part = 1 + max((part_number(p) for p in existing), default=-1)

    def append(self, records: Sequence[dict[str, Any]]) -> None:
        """Number the records (their ``count``), append them and flush them to the OS.

        Seals the current file when it is full. Called from the request thread: one write
        to an open file, no fsync, no network.
        """
        with self._lock:
            for record in records:
                self._count += 1
                record["count"] = self._count
            text = "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records)
            if self._handle is None:
                self._handle = open(self._current, "a", encoding="utf-8")  # noqa: SIM115
            if self._records_in_current == 0:
                self._opened_at = time.monotonic()
            self._handle.write(text)
            self._handle.flush()
            self._records_in_current += len(records)
            if self._records_in_current >= self.part_records:
                self._seal_locked()

    def seal_if_due(
        self,
        max_records: int | None = None,
        max_seconds: float | None = None,
        *,
        force: bool = False,
        lock_timeout: float = -1,
    ) -> Path | None:
        """Seal the current file into the next part when it is full, old enough, or forced.

        Args:
            max_records: seal once the current file holds this many records
                (default ``part_records``).
            max_seconds: ... or once its first record is this old (s; default
                ``part_seconds``).
            force: seal whatever the current file holds (nothing when it is empty).
            lock_timeout: give up (returning None) when the log stays busy this long (s;
                negative: wait as long as it takes). A signal handler must not wait for a
                lock its own thread may hold.

        Returns:
            The sealed part, or None when nothing was sealed.
        """
        max_records = self.part_records if max_records is None else max_records
        max_seconds = self.part_seconds if max_seconds is None else max_seconds
        if not self._lock.acquire(timeout=lock_timeout):
            return None
        try:
            if self._records_in_current == 0:
                return None
            due = self._records_in_current >= max_records or (
                time.monotonic() - self._opened_at >= max_seconds
            )
            return self._seal_locked() if (due or force) else None
        finally:
            self._lock.release()

    def _seal_locked(self) -> Path:
        if self._handle is not None:
            self._handle.close()
            self._handle = None
        part = self.folder / f"part-{self._next_part:05d}.jsonl"
        self._current.rename(part)
        self._part_sizes[part] = self._records_in_current
        self._next_part += 1
        self._records_in_current = 0
        return part

    def close(self) -> None:
        """Close the open handle (the current file stays, unsealed, for the next start)."""
        with self._lock:
            if self._handle is not None:
                self._handle.close()
                self._handle = None

    @property
    def unsealed_records(self) -> int:
        """Records in the current file, not yet sealed."""
        return self._records_in_current

    def pending_parts(self) -> list[Path]:
        """Sealed parts not yet delivered, oldest first."""
        return pending_parts(self.folder)

    def pending_records(self) -> int:
        """Records waiting for delivery: in pending parts and in the current file."""
        return sum(self._size(p) for p in self.pending_parts()) + self._records_in_current

    def _size(self, part: Path) -> int:
        size = self._part_sizes.get(part)
        if size is None:
            try:
                size = sum(1 for _ in part.open(encoding="utf-8"))
            except FileNotFoundError:
                return 0
            self._part_sizes[part] = size
        return size

    def begin_shipping(self, part: Path) -> None:
        """Protect ``part`` from :meth:`enforce_backlog` while it is being delivered."""
        with self._lock:
            self._shipping = part

    def end_shipping(self) -> None:
        """The part being delivered is done (delivered or not)."""
        with self._lock:
            self._shipping = None

    @staticmethod
    def read_part(part: Path) -> list[dict[str, Any]]:
        """The records of a sealed part, in order (a torn last line is left out)."""
        return read_records(part)

    @staticmethod
    def mark_shipped(part: Path) -> None:
        """Record that ``part`` was delivered: it is no longer pending."""
        part.with_suffix(".shipped").touch()

    def enforce_backlog(self, max_records: int) -> int:
        """Drop the oldest pending parts while more than ``max_records`` records wait.

        Each drop is logged as a warning that says how many records went. The part being
        delivered right now is never dropped.

        Args:
            max_records: most undelivered records kept on disk.

        Returns:
            The number of records dropped by this call.
        """
        with self._lock:
            shipping = self._shipping
        parts = [p for p in self.pending_parts() if p != shipping]
        counts = [self._size(p) for p in parts]
        total = sum(counts) + (self._size(shipping) if shipping else 0)
        dropped_now = 0
        while parts and total > max_records:
            oldest = parts.pop(0)
            dropped = counts.pop(0)
            oldest.unlink(missing_ok=True)
            self._part_sizes.pop(oldest, None)
            total -= dropped
            dropped_now += dropped
            self.dropped_records += dropped
            logger.warning(
                "telemetry backlog above %d records while the tracking server is unreachable: "
                "dropped %d of the oldest records (%d dropped in this session)",
                max_records,
                dropped,
                self.dropped_records,
            )
        return dropped_now


def pending_parts(folder: Path) -> list[Path]:
    """Sealed parts of a session folder not yet delivered, oldest first."""
    return sorted(p for p in folder.glob("part-*.jsonl") if not p.with_suffix(".shipped").exists())


def read_records(path: Path) -> list[dict[str, Any]]:
    """The records of a log file, in order.

    A line that is not JSON (the last line of a file whose writer was killed mid-write)
    is left out with a warning.
    """
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line:
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            logger.warning("telemetry: left out a torn line of %s", path.name)
    return records


def seal_orphan(folder: Path) -> Path | None:
    """Seal the current file of a dead session into its next part (None when empty).

    Only for a folder whose writer is gone (see :mod:`eye_model.telemetry.adoption`).
    """
    current = folder / CURRENT_NAME
    if not current.exists() or current.stat().st_size == 0:
        current.unlink(missing_ok=True)
        return None
    existing = sorted(folder.glob("part-*.jsonl"))
    part = folder / f"part-{1 + max((part_number(p) for p in existing), default=-1):05d}.jsonl"
    current.rename(part)
    return part

"""The local inference log: a session's records as JSON-lines files on disk.

Records are appended to ``<session folder>/current.jsonl``, which is sealed into numbered
parts (``part-00000.jsonl``, ...). A part stays pending until it has been delivered to
MLflow (marked by a ``part-NNNNN.shipped`` file beside it). This log is the source of truth:
nothing is lost while the tracking server is away, up to a bounded backlog.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


class InferenceLog:
    """The session's local, append-only inference log, sealed into numbered parts.

    Attributes:
        folder: the session's folder.
        dropped_records: records dropped by :meth:`enforce_backlog` so far.
    """

    def __init__(self, folder: Path) -> None:
        """Open (and create) the log in ``folder``; numbering goes on after existing parts."""
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.dropped_records = 0
        self._lock = threading.Lock()
        self._current = folder / "current.jsonl"
        self._records_in_current = 0
        self._opened_at = time.monotonic()
        existing = sorted(folder.glob("part-*.jsonl"))
        self._next_part = 1 + max((int(p.name[5:10]) for p in existing), default=-1)

    def append(self, records: Sequence[dict[str, Any]]) -> None:
        """Append records (one JSON line each) and flush them to the OS."""
        text = "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records)
        with self._lock:
            if self._records_in_current == 0:
                self._opened_at = time.monotonic()
            with open(self._current, "a", encoding="utf-8") as handle:
                handle.write(text)
            self._records_in_current += len(records)

    def seal_if_due(
        self, max_records: int, max_seconds: float, *, force: bool = False
    ) -> Path | None:
        """Seal the current file into the next part when it is full, old enough, or forced.

        Args:
            max_records: seal once the current file holds this many records.
            max_seconds: ... or once its first record is this old (s).
            force: seal whatever the current file holds (nothing when it is empty).

        Returns:
            The sealed part, or None when nothing was sealed.
        """
        with self._lock:
            if self._records_in_current == 0:
                return None
            due = self._records_in_current >= max_records or (
                time.monotonic() - self._opened_at >= max_seconds
            )
            if not (due or force):
                return None
            part = self.folder / f"part-{self._next_part:05d}.jsonl"
            self._current.rename(part)
            self._next_part += 1
            self._records_in_current = 0
            return part

    def pending_parts(self) -> list[Path]:
        """Sealed parts not yet delivered, oldest first."""
        return sorted(
            p for p in self.folder.glob("part-*.jsonl") if not p.with_suffix(".shipped").exists()
        )

    @staticmethod
    def read_part(part: Path) -> list[dict[str, Any]]:
        """The records of a sealed part, in order."""
        return [json.loads(line) for line in part.read_text(encoding="utf-8").splitlines() if line]

    @staticmethod
    def mark_shipped(part: Path) -> None:
        """Record that ``part`` was delivered: it is no longer pending."""
        part.with_suffix(".shipped").touch()

    def enforce_backlog(self, max_records: int) -> int:
        """Drop the oldest pending parts while more than ``max_records`` records wait.

        Each drop is logged as a warning that says how many records went.

        Args:
            max_records: most undelivered records kept on disk.

        Returns:
            The number of records dropped by this call.
        """
        parts = self.pending_parts()
        counts = [sum(1 for _ in p.open(encoding="utf-8")) for p in parts]
        total = sum(counts)
        dropped_now = 0
        while parts and total > max_records:
            oldest = parts.pop(0)
            dropped = counts.pop(0)
            oldest.unlink(missing_ok=True)
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

"""Session folders and who owns them: adopting the inference logs of dead processes.

Each session folder holds ``session.json`` (:class:`SessionManifest`: host, pid and the
process's start time, the model, and the MLflow run once created) and ``session.lock``,
which the owning process holds locked (``flock``) while it lives; the kernel releases the
lock when the process dies, however it dies.

At start, the shipper of a serving process adopts the folders of dead sessions on this
host (:func:`adopt_dead_sessions`): a session is dead when its pid runs no process started
at the recorded time (a reused pid is another process) and its lock can be taken. The
adopter keeps that lock while it works, so two starting workers never adopt the same
folder. It seals the unsealed file, ships every pending part into the session's own run
(creating it when the session never reached the tracking server), tags the run with
``recovered_records`` and ends it: ``KILLED`` when the process died without closing,
``FINISHED`` when it closed but could not deliver (a shutdown during an outage).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import logging
import os
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from eye_model.telemetry.config import TelemetryConfig
from eye_model.telemetry.inference_log import pending_parts, seal_orphan
from eye_model.telemetry.records import ModelIdentity
from eye_model.telemetry.shipping import RunShipper

logger = logging.getLogger(__name__)

MANIFEST_NAME = "session.json"
LOCK_NAME = "session.lock"
#: Run tag: how many records an adopting process delivered for a dead session.
RECOVERED_TAG = "recovered_records"


@dataclass
class SessionManifest:
    """What a session folder says about its session (``session.json``).

    Attributes:
        session_id: the session's id (the folder's name).
        host: the host name of its process.
        pid: its process.
        start_time: the process's start (``/proc/<pid>/stat`` clock ticks, or epoch s).
        boot_id: the kernel's boot id ("" where unknown).
        started_at: the session's start (epoch s).
        identity: the served model.
        run_id: the session's MLflow run, once created.
        closed: the process closed the session (a clean shutdown).
        ended: the run was ended: nothing left to do for anyone.
    """

    session_id: str
    host: str
    pid: int
    start_time: int
    started_at: float
    boot_id: str = ""
    identity: ModelIdentity = field(default_factory=ModelIdentity)
    run_id: str | None = None
    closed: bool = False
    ended: bool = False

    @classmethod
    def for_this_process(
        cls, session_id: str, started_at: float, identity: ModelIdentity
    ) -> SessionManifest:
        """The manifest of a session this process starts now."""
        from eye_model.stack.processes import process_identity

        me = process_identity(os.getpid())
        return cls(
            session_id=session_id,
            host=socket.gethostname(),
            pid=os.getpid(),
            start_time=me.start_time if me else 0,
            boot_id=me.boot_id if me else "",
            started_at=started_at,
            identity=identity,
        )

    def write(self, folder: Path) -> None:
        """Write ``session.json`` atomically (a reader never sees half of it)."""
        record: dict[str, Any] = dataclasses.asdict(self)
        temporary = folder / f".{MANIFEST_NAME}.{os.getpid()}.{threading.get_ident()}"
        temporary.write_text(json.dumps(record), encoding="utf-8")
        temporary.replace(folder / MANIFEST_NAME)

    @classmethod
    def read(cls, folder: Path) -> SessionManifest | None:
        """The manifest of ``folder``; None when it has none or it is unreadable."""
        try:
            record = json.loads((folder / MANIFEST_NAME).read_text(encoding="utf-8"))
            record["identity"] = ModelIdentity(**record.get("identity") or {})
            return cls(**record)
        except (OSError, ValueError, TypeError):
            return None

    def process_alive(self) -> bool:
        """Whether the session's process still runs (a reused pid is another process)."""
        from eye_model.stack.processes import process_identity

        live = process_identity(self.pid)
        if live is None:
            return False
        same_boot = not (self.boot_id and live.boot_id) or self.boot_id == live.boot_id
        return same_boot and (not self.start_time or live.start_time == self.start_time)


@contextlib.contextmanager
def session_lock(folder: Path, *, wait: bool) -> Iterator[IO[bytes] | None]:
    """Hold ``folder``'s session lock (None when ``wait`` is false and it is taken)."""
    handle = open(folder / LOCK_NAME, "ab")  # noqa: SIM115
    try:
        flags = fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB)
        try:
            fcntl.flock(handle, flags)
        except OSError:  # taken (or no locks on this file system: never adopt blindly)
            yield None
            return
        yield handle
    finally:
        handle.close()  # closing the file releases the lock


def own_session(folder: Path, manifest: SessionManifest) -> IO[bytes]:
    """Mark ``folder`` as this live process's: write its manifest, take its lock.

    Returns:
        The lock's file; keep it open while the session lives.
    """
    folder.mkdir(parents=True, exist_ok=True)
    handle = open(folder / LOCK_NAME, "ab")  # noqa: SIM115
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:  # a file system without locks: the pid check still protects
        logger.warning("telemetry could not lock %s (%s)", folder / LOCK_NAME, exc)
    manifest.write(folder)
    return handle


def dead_sessions(log_dir: Path, own: Path | None = None) -> list[Path]:
    """Folders under ``log_dir`` of sessions on this host whose process is gone, oldest first.

    Sessions of live processes, of other hosts, already ended, or without a manifest
    (written by an older version) are left alone.
    """
    if not log_dir.is_dir():
        return []
    host = socket.gethostname()
    found = []
    for folder in sorted(log_dir.iterdir()):
        if folder == own or not folder.is_dir():
            continue
        manifest = SessionManifest.read(folder)
        if manifest is None or manifest.ended or manifest.host != host:
            continue
        if not manifest.process_alive():
            found.append(folder)
    return found


def adopt_session(folder: Path, config: TelemetryConfig, stop: threading.Event) -> int | None:
    """Deliver a dead session's records to its run and end the run.

    Args:
        folder: the session's folder (see :func:`dead_sessions`).
        config: tracking URI and experiment of this process.
        stop: set when this process shuts down: stop between parts, keep the rest.

    Returns:
        Records delivered; None when another process holds the folder or this one stopped.

    Raises:
        Exception: whatever the tracking server raised; the folder keeps what is left.
    """
    with session_lock(folder, wait=False) as lock:
        if lock is None:
            return None
        manifest = SessionManifest.read(folder)
        if manifest is None or manifest.ended or manifest.process_alive():
            return 0
        seal_orphan(folder)
        parts = pending_parts(folder)
        if not parts and manifest.run_id is None:  # never recorded anything
            manifest.ended = True
            manifest.write(folder)
            return 0

        def remember(run_id: str) -> None:
            manifest.run_id = run_id
            manifest.write(folder)

        shipper = RunShipper(
            config,
            manifest.identity,
            session_id=manifest.session_id,
            started_at=manifest.started_at,
            run_id=manifest.run_id,
            pid=manifest.pid,
            on_run=remember,
        )
        _check_run_exists(shipper)
        shipper.ensure_run()
        delivered = _recovered_so_far(shipper)
        for part in parts:
            if stop.is_set():
                return None
            delivered += shipper.ship_part(part)
            shipper.tag(RECOVERED_TAG, str(delivered))
        status = "FINISHED" if manifest.closed else "KILLED"
        shipper.finish(status, {RECOVERED_TAG: str(delivered)})
        manifest.ended = True
        manifest.write(folder)
        logger.warning(
            "telemetry adopted session %s of dead process %d: delivered %d records to run %s "
            "(ended %s)",
            manifest.session_id,
            manifest.pid,
            delivered,
            shipper.run_id,
            status,
        )
        return delivered


def _check_run_exists(shipper: RunShipper) -> None:
    """Forget the manifest's run when the tracking server no longer has it."""
    from mlflow.exceptions import MlflowException

    if shipper.run_id is None:
        return
    client, run_id = shipper.ensure_run()
    try:
        client.get_run(run_id)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        shipper.run_id = None


def _recovered_so_far(shipper: RunShipper) -> int:
    """The run's ``recovered_records`` tag (an adoption cut short by a shutdown), else 0."""
    client, run_id = shipper.ensure_run()
    try:
        return int(client.get_run(run_id).data.tags.get(RECOVERED_TAG, "0"))
    except ValueError:
        return 0


def adopt_dead_sessions(
    log_dir: Path, own: Path, config: TelemetryConfig, stop: threading.Event
) -> int:
    """Adopt every dead session under ``log_dir`` (see :func:`adopt_session`).

    Returns:
        Records delivered.

    Raises:
        Exception: the first failure of the tracking server (the rest waits for a retry).
    """
    total = 0
    for folder in dead_sessions(log_dir, own):
        if stop.is_set():
            break
        total += adopt_session(folder, config, stop) or 0
    return total

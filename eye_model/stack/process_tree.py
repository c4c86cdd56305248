"""The processes a server command runs, and how they ended (Linux ``/proc``).

The supervisor (:mod:`eye_model.stack.supervisor`) waits for its own child, but the
processes that hold the model are further down: ``mlflow models serve`` runs
``uvicorn``, which with ``--workers N`` runs N workers and replaces any that dies. Those
are watched here: a pidfd per worker signals its death at once, and its exit status is
read from ``/proc/<pid>/stat`` before its parent collects it. Elsewhere than on Linux
these functions see no process and the workers go unwatched.
"""

from __future__ import annotations

import ctypes
import os
import select
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

_PR_SET_PDEATHSIG = 1


def describe_exit(returncode: int) -> str:
    """``killed by SIGKILL`` for -9, ``exited with code 1`` for 1 (``Popen.returncode`` style)."""
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exited with code {returncode}"


def child_pids(pid: int) -> list[int]:
    """The child processes of ``pid`` (empty where ``/proc`` does not list them)."""
    kids: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return kids
    for task in tasks:
        try:
            kids += [int(p) for p in Path(f"/proc/{pid}/task/{task}/children").read_text().split()]
        except OSError:
            continue
    return kids


def process_name(pid: int) -> str:
    """A short name: ``worker`` (a multiprocessing child), else its program (``uvicorn``)."""
    try:
        parts = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return "process"
    if any("spawn_main" in part or part == "--multiprocessing-fork" for part in parts):
        return "worker"
    programs = [Path(part).name for part in parts[:2] if part and not part.startswith("-")]
    return programs[-1] if programs else "process"


def ended_cause(pid: int) -> str | None:
    """How an ended process its parent has not collected yet ended; None if not a zombie.

    The exit status is field 52 of ``/proc/<pid>/stat`` (Linux 3.5 and later).
    """
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    if fields[0] != "Z" or len(fields) < 50:
        return None
    try:
        return describe_exit(os.waitstatus_to_exitcode(int(fields[-1])))
    except ValueError:
        return None


#: ``PIDFD_GET_INFO`` (Linux 6.13+): ``_IOWR(0xFF, 11, struct pidfd_info)``, 64-byte version 0.
_PIDFD_GET_INFO = (3 << 30) | (64 << 16) | (0xFF << 8) | 11
#: ``PIDFD_INFO_EXIT`` (Linux 6.15+): the exit status of a process its parent has collected.
_PIDFD_INFO_EXIT = 1 << 3


def reaped_cause(pidfd: int) -> str | None:
    """How the process of ``pidfd`` ended once its parent collected it; None if unknown.

    Linux keeps the exit status with the pidfd (``PIDFD_GET_INFO``, 6.15 and later), so it
    can be read after uvicorn has reaped its worker, which on a fast machine it does before
    ``/proc`` could be read. Older kernels give None.
    """
    import fcntl
    import struct

    buffer = bytearray(struct.pack("=Q", _PIDFD_INFO_EXIT) + bytes(56))
    try:
        fcntl.ioctl(pidfd, _PIDFD_GET_INFO, buffer)
    except OSError:
        return None
    mask = struct.unpack_from("=Q", buffer, 0)[0]
    if not mask & _PIDFD_INFO_EXIT:
        return None
    status = struct.unpack_from("=i", buffer, 60)[0]  # exit_code, a wait(2) status
    try:
        return describe_exit(os.waitstatus_to_exitcode(status))
    except ValueError:
        return None


def oom_kills() -> int | None:
    """Processes of this cgroup the kernel killed for lack of memory (cgroup v2), or None."""
    try:
        line = Path("/proc/self/cgroup").read_text().splitlines()[0]
        events = Path("/sys/fs/cgroup", line.split("::", 1)[1].lstrip("/"), "memory.events")
        for entry in events.read_text().splitlines():
            key, _, value = entry.partition(" ")
            if key == "oom_kill":
                return int(value)
    except (OSError, IndexError, ValueError):
        return None
    return None


def _load_prctl() -> Callable[[int, int], int] | None:
    try:
        prctl: Callable[[int, int], int] = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return prctl


#: Loaded before any fork: a child must not load libraries between fork and exec.
_PRCTL = _load_prctl()


def die_with_parent() -> None:
    """In a child before ``exec``: receive SIGTERM when the parent dies, even by SIGKILL."""
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, signal.SIGTERM)


#: :func:`die_with_parent` where it works (a ``preexec_fn``), else None.
PARENT_DEATH_SIGNAL: Callable[[], None] | None = die_with_parent if _PRCTL is not None else None


@dataclass(frozen=True)
class WorkerDeath:
    """A worker that ended.

    Attributes:
        pid: its pid.
        name: :func:`process_name`.
        parent: the pid of the process that started it (which may replace it).
        cause: :func:`describe_exit` of its status, or why that is unknown.
        when: ``time.monotonic()`` when it was seen.
    """

    pid: int
    name: str
    parent: int
    cause: str
    when: float


class WorkerWatch:
    """The grandchildren of a command (uvicorn's workers under ``mlflow models serve``),
    each watched through a pidfd so that its death is seen at once."""

    def __init__(self) -> None:
        self._watched: dict[int, tuple[int, int, str]] = {}  # fd -> (pid, parent, name)

    def refresh(self, root: int) -> None:
        """Watch the grandchildren of ``root``; name them again (a new one may not have
        replaced its parent's command line by its own yet)."""
        known = {pid: fd for fd, (pid, _, _) in self._watched.items()}
        for parent in child_pids(root):
            for pid in child_pids(parent):
                name, fd = process_name(pid), known.get(pid)
                if fd is None:
                    try:
                        fd = os.pidfd_open(pid)
                    except (OSError, AttributeError):
                        continue
                elif name == "process":  # ended meanwhile: a zombie has no command line
                    continue
                self._watched[fd] = (pid, parent, name)

    def wait(self, timeout: float) -> list[WorkerDeath]:
        """Wait up to ``timeout`` seconds; return the workers that ended meanwhile."""
        if not self._watched:
            time.sleep(timeout)
            return []
        ready, _, _ = select.select(list(self._watched), [], [], timeout)
        deaths = []
        for fd in ready:
            pid, parent, name = self._watched.pop(fd)
            cause = _death_cause(pid, fd)
            os.close(fd)
            deaths.append(WorkerDeath(pid, name, parent, cause, time.monotonic()))
        return deaths

    def close(self) -> None:
        """Stop watching (close the pidfds)."""
        for fd in self._watched:
            os.close(fd)
        self._watched.clear()


def _death_cause(pid: int, pidfd: int, patience: float = 0.2) -> str:
    """How a watched worker ended: from ``/proc`` while a zombie, else from its pidfd.

    Between the two (its parent collecting it) neither may answer for a moment: retry for
    up to ``patience`` seconds.
    """
    deadline = time.monotonic() + patience
    while True:
        cause = ended_cause(pid) or reaped_cause(pidfd)
        if cause is not None:
            return cause
        if time.monotonic() >= deadline:
            return "ended (its exit status was already collected)"
        time.sleep(0.005)

"""Starting, watching and stopping the server processes eye-model runs.

Every server runs in its own session (process group), so stopping it stops every
worker it spawned and nothing is left behind. A background service is remembered in a
pid file that records the process's identity: its pid, its start time and its command
line. A pid file is trusted only while a live process still has that identity, so
after a reboot or when the pid went to another program, ``stack down`` reports the
file as stale and removes it instead of signalling a stranger.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

_PROC = Path("/proc")
_BOOT_ID = _PROC / "sys" / "kernel" / "random" / "boot_id"


def find_free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that is free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def local_url(host: str, port: int) -> str:
    """The URL this machine reaches a server on that listens on ``host``:``port``."""
    return f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"


def mlflow_executable() -> list[str]:
    """The ``mlflow`` command of this interpreter's environment."""
    candidate = Path(sys.executable).with_name("mlflow")
    if candidate.exists():
        return [str(candidate)]
    return [sys.executable, "-m", "mlflow"]


def server_environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment plus ``extra``, with this interpreter's ``bin`` first on PATH.

    ``mlflow models serve`` starts ``uvicorn`` by name; from a virtual environment
    that was not activated it would otherwise not be found.

    MLflow's server job runner is off unless the environment turns it on: eye-model uses
    none of its jobs (GenAI scorers, prompt optimisation, trace roll-ups), and it costs
    each ``mlflow server`` eight more processes and about 12 s of CPU at start on two cores.
    """
    env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **os.environ, **(extra or {})}
    bin_dir = str(Path(sys.executable).parent)
    if bin_dir not in env.get("PATH", "").split(os.pathsep):
        env["PATH"] = os.pathsep.join([bin_dir, env.get("PATH", "")]).rstrip(os.pathsep)
    return env


def start_process(
    command: Sequence[str],
    *,
    log_path: str | Path | None = None,
    env: Mapping[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``command`` in its own process group, its output going to ``log_path``.

    A process group lets :func:`stop_process` stop the server and every worker it
    spawned, so nothing is left behind.

    Args:
        command: the command line.
        log_path: file the output is appended to (None: discarded).
        env: the whole environment of the process (default :func:`server_environment`).

    Returns:
        The process, leader of its own process group (its pgid is its pid).
    """
    out = open(log_path, "ab") if log_path else None  # noqa: SIM115
    try:
        return subprocess.Popen(
            list(command),
            stdout=out if out is not None else subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else server_environment(),
            start_new_session=True,
        )
    finally:
        if out is not None:
            out.close()


def wait_for_http(
    url: str,
    *,
    timeout: float = 120.0,
    process: subprocess.Popen[bytes] | None = None,
    interval: float = 0.25,
) -> float:
    """Wait until ``url`` answers HTTP 200.

    Args:
        url: the URL to poll (``/ping`` of a model server, ``/health`` of a tracking server).
        timeout: seconds to wait at most.
        process: the server process; waiting stops early if it exits.
        interval: seconds between attempts.

    Returns:
        Seconds waited.

    Raises:
        RuntimeError: when the process exits or the timeout passes first.
    """
    start = time.monotonic()
    while True:
        if process is not None and process.poll() is not None:
            raise RuntimeError(
                f"the server exited with code {process.returncode} before {url} answered"
            )
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return time.monotonic() - start
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            pass
        if time.monotonic() - start > timeout:
            raise RuntimeError(f"{url} did not answer within {timeout:.0f} s")
        time.sleep(interval)


def wait_group_gone(
    pgid: int, timeout: float, process: subprocess.Popen[bytes] | None = None
) -> bool:
    """Wait until no process of group ``pgid`` is left (reaping ``process`` if given).

    Returns:
        Whether the group is gone.
    """
    deadline = time.monotonic() + timeout
    while True:
        if process is not None:
            process.poll()
        else:
            try:  # reap the group leader if it is our child, so a zombie is not counted
                os.waitpid(pgid, os.WNOHANG)
            except ChildProcessError:
                pass
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)


def stop_group(
    pgid: int, *, grace: float = 20.0, process: subprocess.Popen[bytes] | None = None
) -> bool:
    """Stop process group ``pgid``: SIGTERM, then SIGKILL after ``grace`` seconds.

    Every process of the group gets ``grace`` seconds to shut down cleanly (a scoring
    server delivers its last telemetry then).

    Args:
        pgid: the process group (the pid of its leader).
        grace: seconds between SIGTERM and SIGKILL.
        process: the leader, when it is this process's child (it is reaped).

    Returns:
        Whether the group is gone.
    """
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pgid, sig)
        except (ProcessLookupError, PermissionError):
            break
        if wait_group_gone(pgid, wait, process):
            return True
    return wait_group_gone(pgid, 0.0, process)


def stop_process(process: subprocess.Popen[bytes], *, grace: float = 20.0) -> int | None:
    """Stop a process started by :func:`start_process` and its whole process group.

    Returns:
        The exit code.
    """
    stop_group(process.pid, grace=grace, process=process)
    try:
        process.wait(timeout=5.0)
    except subprocess.TimeoutExpired:
        pass
    return process.returncode


# --- which process a pid is --------------------------------------------------------------


@dataclass(frozen=True)
class ProcessIdentity:
    """What tells a process apart from a later one that got the same pid.

    Attributes:
        pid: the process id.
        start_time: when the process started: clock ticks after boot (field 22,
            ``starttime``, of ``/proc/<pid>/stat``); where there is no ``/proc``,
            seconds since the epoch as ``ps`` reports them.
        command: its command line (``/proc/<pid>/cmdline``, or ``ps``'s one string).
        boot_id: the kernel's id of the boot the process started in ("" where unknown).
    """

    pid: int
    start_time: int
    command: tuple[str, ...]
    boot_id: str = ""

    def to_json(self) -> str:
        """The pid file's text."""
        record = {
            "pid": self.pid,
            "start_time": self.start_time,
            "command": list(self.command),
            "boot_id": self.boot_id,
        }
        return json.dumps(record) + "\n"

    @classmethod
    def from_json(cls, text: str) -> ProcessIdentity:
        """Read a pid file's text.

        Raises:
            ValueError: the text is not a complete record (a bare pid included).
        """
        record = json.loads(text)
        if not isinstance(record, dict):
            raise ValueError("not a pid record")
        try:
            pid, start_time, command = record["pid"], record["start_time"], record["command"]
        except KeyError as exc:
            raise ValueError(f"the pid record has no {exc}") from None
        if not (
            isinstance(pid, int)
            and isinstance(start_time, int)
            and isinstance(command, list)
            and all(isinstance(part, str) for part in command)
        ):
            raise ValueError("the pid record holds values of the wrong type")
        return cls(pid, start_time, tuple(command), str(record.get("boot_id") or ""))

    def matches(self, live: ProcessIdentity) -> bool:
        """Whether ``live`` is this very process (same pid, start, command line and boot)."""
        same_boot = not (self.boot_id and live.boot_id) or self.boot_id == live.boot_id
        return (
            self.pid == live.pid
            and self.start_time == live.start_time
            and self.command == live.command
            and same_boot
        )


def _boot_id() -> str:
    try:
        return _BOOT_ID.read_text().strip()
    except OSError:
        return ""


def _identity_from_proc(pid: int) -> ProcessIdentity | None:
    folder = _PROC / str(pid)
    try:
        stat = (folder / "stat").read_text()
        cmdline = (folder / "cmdline").read_bytes()
    except OSError:  # gone, or hidden from this user
        return None
    # The command name (field 2) is in parentheses and may hold blanks and parentheses.
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] in ("Z", "X"):  # dead, waiting for its parent to reap it
        return None
    parts = cmdline.split(b"\0")
    if parts and parts[-1] == b"":
        parts.pop()
    command = tuple(part.decode(errors="surrogateescape") for part in parts)
    return ProcessIdentity(pid, int(fields[19]), command, _boot_id())


def _identity_from_ps(pid: int) -> ProcessIdentity | None:
    try:
        result = subprocess.run(
            ["ps", "-o", "lstart=", "-o", "command=", "-p", str(pid)],
            capture_output=True,
            text=True,
            timeout=10,
            env={**os.environ, "LC_ALL": "C"},
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    line = result.stdout.strip()
    if result.returncode != 0 or len(line) < 24:
        return None
    try:  # lstart: "Tue Jun  3 10:11:12 2025"
        started = int(
            time.mktime(time.strptime(" ".join(line[:24].split()), "%a %b %d %H:%M:%S %Y"))
        )
    except ValueError:
        return None
    return ProcessIdentity(pid, started, (line[24:].strip(),))


def process_identity(pid: int) -> ProcessIdentity | None:
    """The identity of the live process ``pid``; None when no such process runs.

    Read from ``/proc`` on Linux, from ``ps`` elsewhere. A zombie counts as gone.
    """
    if (_PROC / "self" / "stat").exists():
        return _identity_from_proc(pid)
    return _identity_from_ps(pid)


# --- pid files ---------------------------------------------------------------------------


def write_pid_file(path: Path, pid: int) -> ProcessIdentity | None:
    """Record the identity of the live process ``pid`` in ``path`` (JSON).

    Returns:
        The identity recorded; None (and no file) when the process already ended.
    """
    identity = process_identity(pid)
    # Just after exec the kernel may not have filled in the command line yet: recording
    # an empty one would make the file look stale, and `stack down` would not stop it.
    deadline = time.monotonic() + 5.0
    while identity is not None and not identity.command and time.monotonic() < deadline:
        time.sleep(0.01)
        identity = process_identity(pid)
    if identity is None:
        path.unlink(missing_ok=True)
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(identity.to_json())
    return identity


def _stale_reason(text: str) -> tuple[int | None, str | None]:
    """The trusted pid of a pid file's text, or why the file is stale."""
    try:
        recorded = ProcessIdentity.from_json(text)
    except ValueError as exc:
        stripped = text.strip()
        if stripped.isdigit():
            return None, (
                f"it holds a bare pid ({stripped}) without the start time and command line "
                "that tell its process from another one (an older eye-model wrote it), so it "
                f"is not trusted. If that server still runs, stop it with: kill -TERM -{stripped}"
            )
        return None, f"it is not a pid record ({exc})"
    live = process_identity(recorded.pid)
    if live is None:
        return None, f"process {recorded.pid} is no longer running"
    if not recorded.matches(live):
        return None, (
            f"process {recorded.pid} is another program now (its start time or command line "
            "differ from those recorded: the machine restarted or the pid was reused); it was "
            "not signalled"
        )
    return recorded.pid, None


def read_pid_file(path: Path) -> int | None:
    """The pid recorded in ``path`` if that very process still runs, else None.

    A pid file that does not describe a live process (the process ended, the machine
    restarted, the pid went to another program, or the file is a bare pid without
    identity) is stale: a warning says why, and the file is removed. Nothing is
    signalled.
    """
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    pid, reason = _stale_reason(text)
    if reason is not None:
        logger.warning("stale pid file %s removed: %s", path, reason)
        path.unlink(missing_ok=True)
    return pid


def stop_recorded_process(path: Path, *, grace: float = 20.0) -> bool:
    """Stop the process group of the process recorded in pid file ``path``; remove the file.

    Only a process whose identity matches the record is signalled (see
    :func:`read_pid_file`).

    Args:
        path: the pid file.
        grace: seconds between SIGTERM and SIGKILL.

    Returns:
        Whether the recorded process was running (and was stopped).
    """
    pid = read_pid_file(path)
    path.unlink(missing_ok=True)
    if pid is None:
        return False
    stop_group(pid, grace=grace)
    return True

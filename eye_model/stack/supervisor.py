"""Keeping a server alive: restart it when it or one of its workers dies.

``eye-model serve``, ``eye-model stack up`` and ``docker-compose.yml`` run
``mlflow models serve`` under a :class:`Supervisor`
(``python -m eye_model.stack.supervisor [options] -- COMMAND``):

- the command runs in its own process group. When it ends for any reason (a crash, a
  signal, the kernel's out-of-memory killer) whatever is left of its group is stopped
  and the command starts again after a pause (1 s, doubled after each start that never
  became healthy, at most 10 s);
- a worker of the server (``uvicorn --workers N`` keeps N and replaces any that dies)
  is watched too: its death is logged and counted while uvicorn starts a new one;
- each restart is logged with its cause (``killed by SIGKILL``, ``exited with code 1``)
  and counted in a small JSON state file, which ``eye-model stack status`` shows;
- restart storms end: a first start that never answers the health URL, three starts
  in a row that never answer, or more than five restarts within a minute make it give
  up with one line saying why (exit status 1);
- SIGTERM, SIGINT or SIGHUP stop the command's whole group: SIGTERM, then SIGKILL
  after 5 s, so everything is gone within 10 s (exit status 0).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from eye_model.stack.process_tree import (
    PARENT_DEATH_SIGNAL,
    WorkerDeath,
    WorkerWatch,
    child_pids,
    describe_exit,
    oom_kills,
    process_name,
)
from eye_model.stack.processes import stop_group
from eye_model.uris import redact_uri

logger = logging.getLogger(__name__)

#: ``python -m`` runs this module as the supervisor.
SUPERVISOR_MODULE = "eye_model.stack.supervisor"
#: ``mlflow models serve`` waits for its server process and prints this when it fails.
_SERVER_RETURN_CODE = re.compile(rb"returned non zero return code\. Return code = (-?\d+)")
_URI = re.compile(r"[A-Za-z][\w+.-]*://\S+")
#: A line that states an error: a traceback's last line (``ValueError: ...``,
#: ``eye_model.inference.ModelFileError: ...``) or uvicorn's ``ERROR:`` lines.
_ERROR_LINE = re.compile(r"^(?:[A-Za-z_]\w*\.)*[A-Za-z_]\w*(?:Error|Exception): \S|^ERROR:\s+\S")
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
#: A worker whose parent still runs this long after its death is being replaced.
_WORKER_GRACE = 1.0
#: Seconds between a worker's death and an error line that explains it.
_ERROR_NEAR_DEATH = 5.0


@dataclass(frozen=True)
class RestartPolicy:
    """When to restart the command, and when to give up.

    Attributes:
        max_restarts: restarts allowed within ``window``; one more gives up.
        window: seconds.
        max_failed_starts: starts in a row that never became healthy before giving up.
        first_delay: seconds before a restart; doubled after each failed start.
        max_delay: the longest pause, in seconds.
        stop_timeout: seconds between SIGTERM and SIGKILL when stopping the command.
        settle: without a health URL, seconds a start must last to count as healthy.
    """

    max_restarts: int = 5
    window: float = 60.0
    max_failed_starts: int = 3
    first_delay: float = 1.0
    max_delay: float = 10.0
    stop_timeout: float = 5.0
    settle: float = 10.0


def supervised_command(
    command: Sequence[str],
    *,
    name: str,
    health_url: str | None = None,
    state_file: Path | None = None,
) -> list[str]:
    """The command line that runs ``command`` under the supervisor.

    Args:
        command: the server's command line (:func:`~eye_model.stack.build_serve_command`).
        name: what the logs call it (``model server``).
        health_url: answers 200 once the server is ready (``http://127.0.0.1:8080/ping``).
        state_file: where restarts are recorded for ``stack status`` (none when None).

    Returns:
        The argument list.
    """
    supervisor = [sys.executable, "-m", SUPERVISOR_MODULE, "--name", name]
    if health_url:
        supervisor += ["--health-url", health_url]
    if state_file is not None:
        supervisor += ["--state-file", str(state_file)]
    return [*supervisor, "--", *command]


def read_supervisor_state(path: Path, supervisor_pid: int) -> dict[str, Any] | None:
    """The state file of the running supervisor ``supervisor_pid``; None if it is another's."""
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(state, dict) or state.get("supervisor_pid") != supervisor_pid:
        return None
    return state


def _shown(line: str) -> str:
    """An output line as a message may quote it: URIs without passwords, 300 characters."""
    return _URI.sub(lambda m: redact_uri(m.group()), line)[:300]


@dataclass
class _Run:
    """One start of the command."""

    process: subprocess.Popen[bytes]
    started: float
    healthy: bool = False
    server_returncode: int | None = None
    last_line: str = ""
    #: The last line that stated an error (see :data:`_ERROR_LINE`), and when it came.
    last_error: str = ""
    last_error_at: float = 0.0
    threads: list[threading.Thread] = field(default_factory=list)
    deaths: list[WorkerDeath] = field(default_factory=list)


class _GiveUp(RuntimeError):
    """The command keeps failing: restarting it again would not help."""


class Supervisor:
    """Run a server command, restart it when it dies, stop it cleanly on request.

    Args:
        command: the server's command line.
        name: what messages call it (``model server``).
        health_url: answers 200 once the server is ready; without it, a start counts
            as healthy after ``policy.settle`` seconds.
        state_file: JSON file recording pids, restarts and the last cause.
        policy: restart limits and timings.
        env: the command's environment (default: this process's).
    """

    def __init__(
        self,
        command: Sequence[str],
        *,
        name: str = "server",
        health_url: str | None = None,
        state_file: Path | None = None,
        policy: RestartPolicy | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.command = list(command)
        self.name = name
        self.health_url = health_url
        self.state_file = state_file
        self.policy = policy or RestartPolicy()
        self.env = dict(env) if env is not None else None
        self._stop_signal: int | None = None
        self._restart_times: deque[float] = deque()
        self._oom_seen = oom_kills()
        self._state: dict[str, Any] = {
            "supervisor_pid": os.getpid(),
            "name": name,
            "state": "starting",
            "server_pid": None,
            "restarts": 0,
            "last_restart": None,
            "last_cause": None,
        }

    @property
    def program(self) -> str:
        """The command's program for messages: ``mlflow models serve``."""
        words = [Path(self.command[0]).name]
        words += [w for w in self.command[1:3] if not w.startswith("-")]
        return " ".join(words)

    def request_stop(self, signum: int, _frame: object = None) -> None:
        """Signal handler: stop the command and return from :meth:`run`."""
        self._stop_signal = signum

    def run(self) -> int:
        """Supervise until stopped (0) or until restarting is given up (1)."""
        handlers = {}
        if threading.current_thread() is threading.main_thread():
            handlers = {sig: signal.signal(sig, self.request_stop) for sig in _STOP_SIGNALS}
        try:
            return self._supervise()
        except _GiveUp as exc:
            self._record(state="gave up", server_pid=None)
            logger.error("Error: %s", exc)
            return 1
        finally:
            for sig, handler in handlers.items():
                signal.signal(sig, handler)

    def _supervise(self) -> int:
        failed_starts = 0
        ever_healthy = False
        while True:
            run = self._start()
            try:
                self._watch(run)
            except _GiveUp:  # too many workers died: stop what still runs
                stop_group(run.process.pid, grace=self.policy.stop_timeout, process=run.process)
                raise
            if self._stop_signal is not None:
                self._stop(run)
                return 0
            cause = self._exit_cause(run)
            stop_group(run.process.pid, grace=2.0, process=run.process)  # what is left of it
            self._join(run)
            if not run.healthy and not ever_healthy:
                raise _GiveUp(self._never_started(run, cause))
            ever_healthy = True
            failed_starts = 0 if run.healthy else failed_starts + 1
            if failed_starts >= self.policy.max_failed_starts:
                raise _GiveUp(
                    f"{self.name}: {failed_starts} starts in a row ended before it was ready "
                    f"(last: {cause}{self._last_words(run)}); not restarted again"
                )
            delay = min(self.policy.first_delay * 2**failed_starts, self.policy.max_delay)
            self._count_restart(
                f"{self.program} {cause}", f"restarting in {delay:.0f} s", state="restarting"
            )
            if not self._pause(delay):
                self._record(state="stopped", server_pid=None)
                return 0

    def _start(self) -> _Run:
        try:
            process = subprocess.Popen(
                self.command,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=self.env,
                start_new_session=True,
                preexec_fn=PARENT_DEATH_SIGNAL,
            )
        except OSError as exc:  # no such program, not executable
            raise _GiveUp(f"{self.name}: cannot run {self.command[0]}: {exc.strerror}") from None
        run = _Run(process, time.monotonic())
        for source, target in ((process.stdout, sys.stdout), (process.stderr, sys.stderr)):
            thread = threading.Thread(target=self._forward, args=(source, target, run), daemon=True)
            thread.start()
            run.threads.append(thread)
        self._record(state="starting", server_pid=process.pid)
        logger.info("%s: started %s (pid %d)", self.name, self.program, process.pid)
        return run

    @staticmethod
    def _forward(source: IO[bytes] | None, target: IO[str], run: _Run) -> None:
        """Copy the command's output to ours, noting what explains a failure."""
        if source is None:
            return
        out = getattr(target, "buffer", None)
        for line in iter(source.readline, b""):
            if match := _SERVER_RETURN_CODE.search(line):
                run.server_returncode = int(match[1])
            if line.strip():
                run.last_line = line.decode(errors="replace").strip()
                if _ERROR_LINE.match(run.last_line):
                    run.last_error, run.last_error_at = run.last_line, time.monotonic()
            try:
                if out is not None:
                    out.write(line)
                    out.flush()
            except (OSError, ValueError):
                pass  # our output went away: keep draining, or the server would block
        source.close()

    def _watch(self, run: _Run) -> None:
        """Return when the command ends or a stop is requested; count replaced workers."""
        workers = WorkerWatch()
        next_probe = next_refresh = 0.0
        pending: list[WorkerDeath] = []
        try:
            while self._stop_signal is None and run.process.poll() is None:
                now = time.monotonic()
                if not run.healthy and now >= next_probe:
                    next_probe = now + 0.5
                    self._probe(run, now)
                if now >= next_refresh:
                    next_refresh = now + 1.0
                    workers.refresh(run.process.pid)
                deaths = workers.wait(0.2)
                pending += deaths
                run.deaths += deaths
                for death in [d for d in pending if time.monotonic() - d.when >= _WORKER_GRACE]:
                    pending.remove(death)
                    if run.process.poll() is None and death.parent in child_pids(run.process.pid):
                        self._count_restart(
                            f"{death.name} {death.pid} {death.cause}{self._error_near(run, death)}",
                            f"{process_name(death.parent)} starts a new one",
                            state="running" if run.healthy else "starting",
                        )
                        run.deaths.remove(death)
        finally:
            workers.close()

    def _probe(self, run: _Run, now: float) -> None:
        if self.health_url is None:
            run.healthy = now - run.started >= self.policy.settle
        else:
            try:
                with urllib.request.urlopen(self.health_url, timeout=1.0) as response:
                    run.healthy = response.status == 200
            except (urllib.error.URLError, OSError, ValueError):
                return
        if run.healthy:
            self._record(state="running")
            logger.info(
                "%s: ready after %.1f s%s",
                self.name,
                now - run.started,
                f" ({self.health_url} answers)" if self.health_url else "",
            )

    def _exit_cause(self, run: _Run) -> str:
        """Why the command ended: its server process's fate when it printed it."""
        self._join(run, timeout=2.0)  # its last words may explain it
        cause = describe_exit(run.process.returncode)
        if run.server_returncode is not None:
            was = "was " if run.server_returncode < 0 else ""  # killed by SIGKILL; exited ...
            cause += f": its server process {was}{describe_exit(run.server_returncode)}"
        elif run.deaths:
            death = run.deaths[0]
            cause += f": its {death.name} {death.pid} {death.cause}"
        return cause

    def _count_restart(self, cause: str, action: str, *, state: str) -> None:
        """Record a restart; give up when there were too many within the window."""
        now = time.monotonic()
        oom = oom_kills()
        if oom is not None and self._oom_seen is not None and oom > self._oom_seen:
            cause += " (out of memory: the kernel's OOM killer ended a process)"
        self._oom_seen = oom
        self._restart_times.append(now)
        while self._restart_times and now - self._restart_times[0] > self.policy.window:
            self._restart_times.popleft()
        restarts = int(self._state["restarts"]) + 1
        recent = len(self._restart_times)
        if recent <= self.policy.max_restarts:
            logger.warning("%s: %s; %s (restart %d)", self.name, cause, action, restarts)
        self._record(
            state=state,
            restarts=restarts,
            last_restart=datetime.now(UTC).isoformat(timespec="seconds"),
            last_cause=cause,
        )
        if recent > self.policy.max_restarts:
            raise _GiveUp(
                f"{self.name}: {recent} restarts within {self.policy.window:.0f} s (at most "
                f"{self.policy.max_restarts}); last: {cause}. Not restarted again"
            )

    def _pause(self, seconds: float) -> bool:
        """Sleep ``seconds``; False when a stop was requested meanwhile."""
        deadline = time.monotonic() + seconds
        while self._stop_signal is None and time.monotonic() < deadline:
            time.sleep(0.1)
        return self._stop_signal is None

    def _stop(self, run: _Run) -> None:
        assert self._stop_signal is not None
        reason = signal.Signals(self._stop_signal).name
        logger.info("%s: %s received, stopping %s", self.name, reason, self.program)
        self._record(state="stopping")
        stop_group(run.process.pid, grace=self.policy.stop_timeout, process=run.process)
        self._join(run)
        self._record(state="stopped", server_pid=None)
        logger.info("%s: stopped", self.name)

    @staticmethod
    def _join(run: _Run, timeout: float = 2.0) -> None:
        deadline = time.monotonic() + timeout
        for thread in run.threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def _never_started(self, run: _Run, cause: str) -> str:
        waited = f" before {self.health_url} answered" if self.health_url else " at once"
        return (
            f"{self.name} did not start: {self.program} {cause}{waited}"
            f"{self._last_words(run)}. Not restarted: it would fail the same way; fix the "
            "cause and start it again"
        )

    @staticmethod
    def _error_near(run: _Run, death: WorkerDeath) -> str:
        """The error a worker printed as it died (a model that cannot load), if any.

        Only an error line that came within a few seconds of the death: a worker killed by
        a signal prints none, and an older error is about something else.
        """
        if not run.last_error or abs(death.when - run.last_error_at) > _ERROR_NEAR_DEATH:
            return ""
        return f" (its last error: {_shown(run.last_error)})"

    @staticmethod
    def _last_words(run: _Run) -> str:
        """The command's last error line, else its last output line, for a one-line error.

        URIs are shown without their passwords.
        """
        words = run.last_error or run.last_line
        if not words:
            return ""
        return f" (its last {'error' if run.last_error else 'output'}: {_shown(words)})"

    def _record(self, **changes: Any) -> None:
        """Update the state file atomically (a reader never sees half a file)."""
        self._state.update(changes)
        if self.state_file is None:
            return
        temporary = self.state_file.with_name(self.state_file.name + ".tmp")
        try:
            temporary.write_text(json.dumps(self._state) + "\n")
            os.replace(temporary, self.state_file)
        except OSError as exc:
            logger.warning("%s: cannot write %s: %s", self.name, self.state_file, exc.strerror)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m eye_model.stack.supervisor [options] -- COMMAND...``."""
    parser = argparse.ArgumentParser(
        prog=f"python -m {SUPERVISOR_MODULE}", description=__doc__.split("\n\n")[0]
    )
    defaults = RestartPolicy()
    parser.add_argument("--name", default="server", help="What messages call the server.")
    parser.add_argument("--health-url", default=None, help="Answers 200 once it is ready.")
    parser.add_argument("--state-file", type=Path, default=None, help="JSON state file.")
    parser.add_argument("--max-restarts", type=int, default=defaults.max_restarts)
    parser.add_argument("--window", type=float, default=defaults.window, help="Seconds.")
    parser.add_argument("--stop-timeout", type=float, default=defaults.stop_timeout)
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- the server's command")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command: put it after --")
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s eye-model supervisor: %(message)s", force=True
    )
    policy = RestartPolicy(
        max_restarts=args.max_restarts, window=args.window, stop_timeout=args.stop_timeout
    )
    supervisor = Supervisor(
        command,
        name=args.name,
        health_url=args.health_url,
        state_file=args.state_file,
        policy=policy,
    )
    return supervisor.run()


if __name__ == "__main__":
    sys.exit(main())

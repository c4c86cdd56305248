"""The supervisor keeps a server up: real child processes, killed for real.

The servers here are small Python HTTP servers (and a real ``uvicorn --workers 2``) that
start in a second, so restarts, give-ups and stops are checked in seconds; the tests
with ``mlflow models serve`` are in ``tests/integration/test_supervision.py``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from eye_model.stack import (
    StackPaths,
    find_free_port,
    process_identity,
    stack_status,
    start_process,
    stop_process,
    stop_service,
    write_pid_file,
)
from eye_model.stack.process_tree import child_pids, reaped_cause
from eye_model.stack.supervisor import SUPERVISOR_MODULE, supervised_command

#: A server answering /ping, with a helper process in its group (as a server's workers).
SERVER = """
import http.server, os, signal, subprocess, sys, threading
port, mode = int(sys.argv[1]), sys.argv[2]
if mode == "fail":
    print("ValueError: cannot load s3://reader:hunter2@bucket/model", flush=True)
    print("INFO: shutting down", flush=True)  # the error, not the last line, explains it
    sys.exit(3)
if mode == "ignore-term":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
helper = subprocess.Popen(["sleep", "300"])
if mode == "crash":
    threading.Timer(1.0, lambda: os._exit(2)).start()
class Ping(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.end_headers()
    def log_message(self, *args):
        pass
http.server.HTTPServer(("127.0.0.1", port), Ping).serve_forever()
"""
#: An ASGI app for uvicorn's own worker processes.
APP = """
async def app(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})
"""


def _wait_for(predicate: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not happen within {timeout:.0f} s")
        time.sleep(0.1)


def _alive(pid: int) -> bool:
    return process_identity(pid) is not None


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def _state(path: Path) -> dict[str, object]:
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError):
        return {}


class Supervised:
    """A supervisor started on a server command, its state file, log and health URL."""

    def __init__(self, tmp_path: Path, server: list[str], port: int, *options: str) -> None:
        self.paths = StackPaths(tmp_path)
        self.state_file = self.paths.supervisor_file("model")
        self.url = f"http://127.0.0.1:{port}/ping"
        self.log = tmp_path / "supervisor.log"
        command = supervised_command(
            server, name="test server", health_url=self.url, state_file=self.state_file
        )
        command[command.index("--") : command.index("--")] = list(options)
        self.process = start_process(command, log_path=self.log)

    @property
    def state(self) -> dict[str, object]:
        return _state(self.state_file)

    def server_pid(self) -> int:
        pid = self.state.get("server_pid")
        assert isinstance(pid, int), self.state
        return pid

    def wait_running(self, timeout: float = 30.0) -> None:
        _wait_for(lambda: self.state.get("state") == "running", timeout, "a ready server")

    def wait_exit(self, timeout: float) -> int:
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the supervisor still runs after {timeout} s:\n{self.text()}")

    def text(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture
def supervise(tmp_path: Path) -> Iterator[Callable[..., Supervised]]:
    """Start supervisors on the test server; stop whatever is left afterwards."""
    script = tmp_path / "server.py"
    script.write_text(SERVER)
    started: list[Supervised] = []

    def start(
        mode: str = "serve", *options: str, server: Callable[[int], list[str]] | None = None
    ) -> Supervised:
        port = find_free_port()
        command = server(port) if server else [sys.executable, str(script), str(port), mode]
        supervised = Supervised(tmp_path, command, port, *options)
        started.append(supervised)
        return supervised

    yield start
    for supervised in started:
        if supervised.process.poll() is None:
            stop_process(supervised.process, grace=10.0)


def test_a_killed_server_is_restarted_counted_and_shown_by_stack_status(
    supervise: Callable[..., Supervised],
) -> None:
    supervised = supervise()
    supervised.wait_running()
    write_pid_file(supervised.paths.pid_file("model"), supervised.process.pid)
    first = supervised.server_pid()
    (helper,) = child_pids(first)
    assert stack_status(supervised.paths)["model"] == {
        "pid": supervised.process.pid,
        "server_pid": first,
        "state": "running",
        "restarts": 0,
        "last_restart": None,
        "last_cause": None,
    }

    os.kill(first, signal.SIGKILL)
    _wait_for(lambda: supervised.state.get("restarts") == 1, 10, "the restart")
    supervised.wait_running()
    assert _answers(supervised.url)
    assert not _alive(helper)  # what was left of the dead server's group is stopped
    model = stack_status(supervised.paths)["model"]
    assert model is not None
    assert model["pid"] == supervised.process.pid
    assert model["server_pid"] not in (None, first)
    assert model["restarts"] == 1
    assert "server.py" in str(model["last_cause"])
    assert str(model["last_cause"]).endswith("killed by SIGKILL")
    restarted = datetime.fromisoformat(str(model["last_restart"]))
    assert abs((datetime.now(UTC) - restarted).total_seconds()) < 60
    assert "killed by SIGKILL; restarting in 1 s (restart 1)" in supervised.text()

    second = supervised.server_pid()
    (second_helper,) = child_pids(second)
    assert stop_service(supervised.paths, "model", grace=15.0) is True
    assert supervised.process.poll() == 0
    assert not any(_alive(pid) for pid in (second, second_helper))
    assert supervised.state["state"] == "stopped"
    assert stack_status(supervised.paths)["model"] is None


def test_sigterm_stops_the_whole_group_within_10_s_even_a_server_ignoring_it(
    supervise: Callable[..., Supervised],
) -> None:
    supervised = supervise("ignore-term", "--stop-timeout", "2")
    supervised.wait_running()
    server = supervised.server_pid()
    (helper,) = child_pids(server)
    started = time.monotonic()
    supervised.process.send_signal(signal.SIGTERM)
    assert supervised.wait_exit(10) == 0
    assert time.monotonic() - started < 10
    assert not _alive(server) and not _alive(helper)
    assert "SIGTERM received" in supervised.text()
    assert supervised.state["state"] == "stopped"


def test_a_crash_loop_ends_with_one_clear_line(supervise: Callable[..., Supervised]) -> None:
    supervised = supervise("crash", "--max-restarts", "1", "--window", "60")
    assert supervised.wait_exit(60) == 1
    errors = [line for line in supervised.text().splitlines() if "supervisor: Error:" in line]
    assert len(errors) == 1, supervised.text()
    assert "test server: 2 restarts within 60 s (at most 1)" in errors[0]
    assert "exited with code 2" in errors[0]
    assert "Not restarted again" in errors[0]
    assert supervised.state["state"] == "gave up"
    assert supervised.state["restarts"] == 2
    assert supervised.text().count("started python") == 2
    leftovers = subprocess.run(
        ["pgrep", "-f", str(supervised.log.parent / "server.py")], capture_output=True, check=False
    )
    assert leftovers.stdout == b""


def test_a_server_that_never_starts_is_not_restarted(
    supervise: Callable[..., Supervised],
) -> None:
    supervised = supervise("fail")
    assert supervised.wait_exit(30) == 1
    text = supervised.text()
    assert text.count("started python") == 1
    (error,) = [line for line in text.splitlines() if "supervisor: Error:" in line]
    assert "test server did not start" in error
    assert f"exited with code 3 before {supervised.url} answered" in error
    # Its last words name the problem, without the password of a URI.
    assert "(its last error: ValueError: cannot load s3://reader@bucket/model)" in error
    assert "hunter2" not in error
    assert supervised.state["state"] == "gave up"


def test_a_dead_worker_is_counted_while_its_server_replaces_it(
    supervise: Callable[..., Supervised], tmp_path: Path
) -> None:
    (tmp_path / "tinyapp.py").write_text(APP)

    def server(port: int) -> list[str]:
        uvicorn = f"uvicorn --app-dir {tmp_path} --port {port} --workers 2 tinyapp:app"
        # A shell waits for uvicorn as `mlflow models serve` does: workers are grandchildren.
        return ["bash", "-c", f"{uvicorn}; exit $?"]

    supervised = supervise(server=server)
    supervised.wait_running()
    shell = supervised.server_pid()
    (master,) = child_pids(shell)
    workers: list[int] = []

    def two_workers() -> bool:
        workers[:] = [p for p in child_pids(master) if "spawn_main" in _cmdline(p)]
        return len(workers) == 2

    _wait_for(two_workers, 30, "two uvicorn workers")
    time.sleep(1.5)  # the supervisor looks for new workers every second
    victim = workers[0]
    os.kill(victim, signal.SIGKILL)
    _wait_for(lambda: supervised.state.get("restarts") == 1, 15, "the counted restart")
    assert supervised.state["last_cause"] == f"worker {victim} killed by SIGKILL"
    assert supervised.state["server_pid"] == shell  # the server itself kept running
    _wait_for(lambda: two_workers() and victim not in workers, 30, "a new worker")
    assert f"worker {victim} killed by SIGKILL; uvicorn starts a new one" in supervised.text()
    assert _answers(supervised.url)

    # Without their parent the workers would hold the port: the restart stops them first.
    orphans = list(workers)
    os.kill(master, signal.SIGKILL)
    # Up to 11 s by design: 2 s for the dead server's output, SIGTERM then SIGKILL to what is
    # left of its group (2 + 5 s), 2 s more for its output; CI once took longer than 15 s.
    _wait_for(lambda: supervised.state.get("restarts") == 2, 40, "the second restart")
    # The cause may also name the killed master, when the supervisor saw it go first.
    assert "exit $? exited with code 137" in str(supervised.state["last_cause"])
    supervised.wait_running()
    assert supervised.server_pid() != shell
    assert not any(_alive(pid) for pid in orphans)
    assert _answers(supervised.url)


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")
    except OSError:
        return ""


def test_the_supervisor_module_runs_as_a_program_without_warnings() -> None:
    result = subprocess.run(
        [sys.executable, "-m", SUPERVISOR_MODULE, "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0
    assert "--health-url" in result.stdout
    assert result.stderr == ""  # no "found in sys.modules" warning from runpy


def test_a_missing_program_is_one_line(tmp_path: Path) -> None:
    result = subprocess.run(
        supervised_command([str(tmp_path / "no-such-server")], name="test server"),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1, result.stderr
    assert "Error: test server: cannot run" in result.stderr
    assert "No such file or directory" in result.stderr


def test_how_a_process_ended_is_read_from_its_pidfd_after_its_parent_collected_it() -> None:
    # uvicorn reaps a killed worker at once on a fast machine, before /proc can be read: the
    # supervisor then reads the status kept with the worker's pidfd (Linux 6.15 and later).
    release = tuple(int(part) for part in os.uname().release.split(".")[:2])
    if release < (6, 15):
        pytest.skip(f"Linux {os.uname().release} keeps no exit status with a pidfd (6.15+)")
    killed = subprocess.Popen(["sleep", "30"])
    killed_fd = os.pidfd_open(killed.pid)
    failed = subprocess.Popen(["bash", "-c", "exit 3"])
    failed_fd = os.pidfd_open(failed.pid)
    try:
        assert reaped_cause(killed_fd) is None  # still running
        os.kill(killed.pid, signal.SIGKILL)
        killed.wait()
        failed.wait()
        assert reaped_cause(killed_fd) == "killed by SIGKILL"
        assert reaped_cause(failed_fd) == "exited with code 3"
    finally:
        os.close(killed_fd)
        os.close(failed_fd)

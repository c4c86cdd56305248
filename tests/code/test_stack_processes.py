"""Pid files of the stack: trusted only while the recorded process (start time and command
line) still runs, so ``stack down`` never signals a stranger that got the same pid.

Each test starts its own ``sleep`` in its own process group: a signal sent to that group
would end it, so a test whose stranger survives proves nothing was sent.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from eye_model.stack import (
    ProcessIdentity,
    StackPaths,
    process_identity,
    read_pid_file,
    server_environment,
    stack_status,
    start_process,
    stop_process,
    stop_recorded_process,
    stop_service,
    write_pid_file,
)
from eye_model.stack.processes import _identity_from_ps

Starter = Callable[[], "subprocess.Popen[bytes]"]


@pytest.fixture
def start_sleep() -> Iterator[Starter]:
    """Start ``sleep 60`` processes in their own process groups; stop them all afterwards."""
    started: list[subprocess.Popen[bytes]] = []

    def start() -> subprocess.Popen[bytes]:
        process = start_process(["sleep", "60"])
        started.append(process)
        # Just after exec the kernel may show an empty command line for a moment (the pid
        # file writer waits for it the same way).
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            identity = process_identity(process.pid)
            if identity is not None and identity.command:
                break
            time.sleep(0.01)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            stop_process(process, grace=1.0)


def _alive(process: subprocess.Popen[bytes]) -> bool:
    return process.poll() is None and process_identity(process.pid) is not None


def test_the_identity_is_the_processes_start_time_and_command_line(start_sleep: Starter) -> None:
    process = start_sleep()
    identity = process_identity(process.pid)
    assert identity is not None
    assert identity.pid == process.pid
    assert identity.command == ("sleep", "60")
    assert identity.start_time > 0
    assert process_identity(process.pid) == identity  # stable while it runs
    other = process_identity(start_sleep().pid)
    assert other is not None and not identity.matches(other)
    stop_process(process, grace=1.0)
    assert process_identity(process.pid) is None


def test_the_ps_fallback_tells_processes_apart(start_sleep: Starter) -> None:
    process = start_sleep()
    identity = _identity_from_ps(process.pid)
    assert identity is not None
    assert identity.command == ("sleep 60",)
    assert _identity_from_ps(process.pid) == identity
    stop_process(process, grace=1.0)
    assert _identity_from_ps(process.pid) is None


def test_a_pid_file_records_pid_start_time_and_command_line(
    tmp_path: Path, start_sleep: Starter
) -> None:
    process = start_sleep()
    pid_file = tmp_path / "model.pid"
    recorded = write_pid_file(pid_file, process.pid)
    record = json.loads(pid_file.read_text())
    assert record["pid"] == process.pid
    assert record["command"] == ["sleep", "60"]
    assert recorded is not None and record["start_time"] == recorded.start_time
    assert ProcessIdentity.from_json(pid_file.read_text()) == recorded


def test_a_correct_pid_file_stops_the_process(tmp_path: Path, start_sleep: Starter) -> None:
    process = start_sleep()
    paths = StackPaths(tmp_path)
    write_pid_file(paths.pid_file("model"), process.pid)
    model = stack_status(paths)["model"]
    assert stack_status(paths)["tracking"] is None
    # No supervisor state file for this process: its restarts are unknown.
    assert model == {
        "pid": process.pid,
        "server_pid": None,
        "state": None,
        "restarts": None,
        "last_restart": None,
        "last_cause": None,
    }
    assert stop_service(paths, "model", grace=5.0) is True
    assert process.poll() is not None
    assert process_identity(process.pid) is None
    assert not paths.pid_file("model").exists()


@pytest.mark.parametrize(
    "change",
    [
        {"command": ("mlflow", "models", "serve", "-m", "models:/eye/Production")},
        {"start_time": -1},  # the right command line, started at another time
        {"boot_id": "another-boot"},  # recorded before the machine restarted
    ],
    ids=["other-command-line", "other-start-time", "other-boot"],
)
def test_a_pid_file_of_another_process_is_never_signalled(
    tmp_path: Path,
    start_sleep: Starter,
    caplog: pytest.LogCaptureFixture,
    change: dict[str, object],
) -> None:
    stranger = start_sleep()
    live = process_identity(stranger.pid)
    assert live is not None
    if change.get("start_time") == -1:
        change = {"start_time": live.start_time + 100}
    if "boot_id" in change and not live.boot_id:
        pytest.skip("this system has no boot id")
    paths = StackPaths(tmp_path)
    paths.pid_file("tracking").write_text(dataclasses.replace(live, **change).to_json())
    paths.auth_config.write_text("[mlflow]\n")
    with caplog.at_level(logging.WARNING):
        assert stop_service(paths, "tracking", grace=1.0) is False
    assert _alive(stranger)
    assert "is another program now" in caplog.text
    assert not paths.pid_file("tracking").exists()
    assert not paths.auth_config.exists()  # stopping the tracking server still removes it


def test_a_bare_pid_file_is_untrusted_and_removed(
    tmp_path: Path, start_sleep: Starter, caplog: pytest.LogCaptureFixture
) -> None:
    stranger = start_sleep()
    paths = StackPaths(tmp_path)
    paths.pid_file("model").write_text(f"{stranger.pid}\n")  # an older eye-model's file
    with caplog.at_level(logging.WARNING):
        assert stack_status(paths) == {"tracking": None, "model": None}
    assert "bare pid" in caplog.text
    assert f"kill -TERM -{stranger.pid}" in caplog.text
    assert not paths.pid_file("model").exists()
    paths.pid_file("model").write_text(f"{stranger.pid}\n")
    assert stop_recorded_process(paths.pid_file("model"), grace=1.0) is False
    assert _alive(stranger)


def test_a_pid_file_of_an_ended_process_is_stale(
    tmp_path: Path, start_sleep: Starter, caplog: pytest.LogCaptureFixture
) -> None:
    process = start_sleep()
    pid_file = tmp_path / "model.pid"
    write_pid_file(pid_file, process.pid)
    stop_process(process, grace=1.0)
    with caplog.at_level(logging.WARNING):
        assert read_pid_file(pid_file) is None
    assert "no longer running" in caplog.text
    assert not pid_file.exists()
    pid_file.write_text("{not json")
    assert read_pid_file(pid_file) is None
    assert not pid_file.exists()


def test_stack_down_reports_a_stale_pid_file_and_leaves_the_stranger(
    tmp_path: Path, start_sleep: Starter
) -> None:
    stranger = start_sleep()
    live = process_identity(stranger.pid)
    assert live is not None
    paths = StackPaths(tmp_path)
    reused = dataclasses.replace(live, command=("mlflow", "server"))
    paths.pid_file("tracking").write_text(reused.to_json())
    result = subprocess.run(
        [sys.executable, "-m", "eye_model.cli", "stack", "down", "--home", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "stale pid file" in result.stderr
    assert "stopped" not in result.stdout
    assert _alive(stranger)
    assert not paths.pid_file("tracking").exists()


def test_mlflows_server_job_runner_is_off_unless_the_environment_turns_it_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", raising=False)
    assert server_environment()["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"
    monkeypatch.setenv("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "true")
    assert server_environment()["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "true"

"""A supervised `mlflow models serve` survives its workers being killed, and stops cleanly.

Real servers on free loopback ports, killed with SIGKILL as the kernel's out-of-memory
killer would; every process they started is checked gone afterwards.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
import requests

from eye_model.stack import (
    StackPaths,
    find_free_port,
    process_identity,
    read_pid_file,
    server_environment,
    start_model_server,
    start_process,
    stop_process,
    stop_service,
)
from eye_model.stack.process_tree import child_pids
from tests.helpers import b64, draw_fundus_like, encode

#: Telemetry has its own tests; these servers must not write into a test's store.
NO_TELEMETRY = {"ENABLE_MLFLOW_TRACKING": "false"}
EYE_MODEL = [sys.executable, "-m", "eye_model.cli"]


def _wait_for(predicate: Callable[[], object], timeout: float, what: str) -> float:
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            pytest.fail(f"{what} did not happen within {timeout:.0f} s")
        time.sleep(0.2)
    return time.monotonic() - started


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def _command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")
    except OSError:
        return ""


def _descendants(pid: int) -> list[int]:
    found = []
    for child in child_pids(pid):
        found += [child, *_descendants(child)]
    return found


def _uvicorn_workers(supervisor: int) -> list[int]:
    """The processes holding the model: uvicorn, or its workers with --workers N."""
    (serve,) = child_pids(supervisor)
    (uvicorn,) = child_pids(serve)
    assert "uvicorn" in _command_line(uvicorn)
    workers = [p for p in child_pids(uvicorn) if "spawn_main" in _command_line(p)]
    return workers or [uvicorn]


def _score_one(url: str) -> None:
    image = b64(encode(draw_fundus_like(64)))
    response = requests.post(
        f"{url}/invocations",
        json={"dataframe_split": {"columns": ["image"], "data": [[image]]}},
        timeout=60,
    )
    response.raise_for_status()
    assert response.json()["predictions"][0]["error"] is None


def _predictions_counted(metrics_url: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    try:
        text = requests.get(metrics_url, timeout=5).text
    except requests.RequestException:
        return -1
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "eye_model_predictions_total"
    )


def _gone(pids: list[int]) -> bool:
    return all(process_identity(pid) is None for pid in pids)


@pytest.mark.slow
def test_a_killed_worker_of_the_stacks_model_server_answers_again_within_30_s(
    tiny_model_path: Path, tmp_path: Path
) -> None:
    paths = StackPaths(tmp_path / "home")
    port, metrics_port = find_free_port(), find_free_port()
    url = f"http://127.0.0.1:{port}"
    start_model_server(
        paths, str(tiny_model_path), port=port, env=NO_TELEMETRY, metrics_port=metrics_port
    )
    supervisor = read_pid_file(paths.pid_file("model"))
    assert supervisor is not None
    everything = [supervisor]
    try:
        state = paths.supervisor_file("model")
        _wait_for(lambda: json.loads(state.read_text())["state"] == "running", 30, "ready")
        (worker,) = _uvicorn_workers(supervisor)
        everything += _descendants(supervisor)
        _score_one(url)
        os.kill(worker, signal.SIGKILL)
        killed = time.monotonic()
        _wait_for(lambda: json.loads(state.read_text())["restarts"] == 1, 30, "the restart")
        _wait_for(lambda: _answers(f"{url}/ping"), 60, "/ping after the restart")
        back_after = time.monotonic() - killed
        assert back_after <= 30, f"/ping answered again only after {back_after:.1f} s"
        assert _uvicorn_workers(supervisor) != [worker]
        _wait_for(lambda: json.loads(state.read_text())["state"] == "running", 5, "running")
        # The stack's metrics count across the restart: the killed server's answer stays.
        _score_one(url)
        metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
        _wait_for(lambda: _predictions_counted(metrics_url) == 2, 30, "both predictions counted")

        status = subprocess.run(
            [*EYE_MODEL, "stack", "status", "--home", str(paths.home)],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        model = json.loads(status.stdout)["model"]
        assert model["pid"] == supervisor
        assert model["restarts"] == 1
        assert model["state"] == "running"
        assert "killed by SIGKILL" in model["last_cause"]
        assert model["last_restart"]
        log = paths.log_file("model").read_text()
        assert "its server process was killed by SIGKILL; restarting in 1 s (restart 1)" in log
        everything += _descendants(supervisor)
    finally:
        stop_service(paths, "model")
    _wait_for(lambda: _gone(everything), 10, "every process of the model server ending")


@pytest.mark.slow
def test_serve_keeps_n_workers_and_sigterm_stops_everything_within_10_s(
    tiny_model_path: Path, tmp_path: Path
) -> None:
    port = find_free_port()
    log = tmp_path / "serve.log"
    command = [*EYE_MODEL, "serve", "-m", str(tiny_model_path), "-p", str(port), "-w", "2"]
    serve = start_process(command, log_path=log, env=server_environment(NO_TELEMETRY))
    try:
        _wait_for(lambda: "model server: ready after" in log.read_text(), 300, "two workers")
        # `eye-model serve` became the supervisor: the pid a user or systemd started.
        assert "eye_model.stack.supervisor" in _command_line(serve.pid)
        workers = _uvicorn_workers(serve.pid)
        assert len(workers) == 2
        time.sleep(1.5)  # the supervisor looks for new workers every second
        os.kill(workers[0], signal.SIGKILL)
        _wait_for(
            lambda: (
                f"worker {workers[0]} killed by SIGKILL; uvicorn starts a new one"
                in log.read_text()
            ),
            15,
            "the counted worker restart",
        )
        _wait_for(
            lambda: len(set(_uvicorn_workers(serve.pid)) - {workers[0]}) == 2, 30, "a new worker"
        )
        assert _answers(f"http://127.0.0.1:{port}/ping")

        everything = [serve.pid, *_descendants(serve.pid)]
        stopping = time.monotonic()
        serve.send_signal(signal.SIGTERM)
        assert serve.wait(timeout=15) == 0
        _wait_for(lambda: _gone(everything), 10 - (time.monotonic() - stopping), "no orphan")
        assert time.monotonic() - stopping <= 10
        orphans = subprocess.run(
            ["pgrep", "-f", f"--port {port}"], capture_output=True, text=True, check=False
        )
        assert orphans.stdout == ""
    finally:
        if serve.poll() is None:
            stop_process(serve, grace=10)


def _serve_until_it_gives_up(model: Path, port: int, *options: str) -> tuple[str, str]:
    """Run ``eye-model serve`` on a model that cannot load: its one error line, its output."""
    result = subprocess.run(
        [*EYE_MODEL, "serve", "-m", str(model), "-p", str(port), *options],
        capture_output=True,
        text=True,
        timeout=240,
        env=server_environment(NO_TELEMETRY),
        check=False,
    )
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if "supervisor: Error:" in line]
    assert len(errors) == 1, result.stderr
    leftovers = subprocess.run(["pgrep", "-f", f"--port {port}"], capture_output=True, check=False)
    assert leftovers.stdout == b""
    return errors[0], result.stderr


def test_a_model_that_cannot_load_ends_with_one_line_instead_of_a_loop(tmp_path: Path) -> None:
    port = find_free_port()
    error, output = _serve_until_it_gives_up(tmp_path / "no-such-model", port)
    assert "model server did not start: mlflow models serve exited with code 1" in error
    assert f"before http://127.0.0.1:{port}/ping answered" in error
    assert "Not restarted" in error
    assert output.count("started mlflow models serve") == 1


@pytest.mark.slow
def test_a_damaged_model_ends_with_one_line_naming_the_file(
    tiny_model_path: Path, tmp_path: Path
) -> None:
    """uvicorn replaces its workers as they fail to load the model, until the supervisor
    gives up: the line says which file and what to do, not only "exited with code 1"."""
    import shutil

    model = shutil.copytree(tiny_model_path, tmp_path / "model")
    network = model / "artifacts" / "network.keras"
    network.write_bytes(network.read_bytes()[: network.stat().st_size // 2])
    error, _ = _serve_until_it_gives_up(model, find_free_port(), "-w", "2")
    assert "model server: 6 restarts within 60 s (at most 5); last: " in error
    assert "exited with code 1" in error
    assert (
        f"its last error: eye_model.inference.ModelFileError: cannot load the model's "
        f"network file {network}: it is not a complete .keras file" in error
    )
    assert "download, register or log it again" in error

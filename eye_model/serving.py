"""Starting, watching and stopping the servers eye-model runs on.

``mlflow models serve`` is MLflow's own scoring server; these helpers build its
command line, wait until it answers and stop it with everything it started.
The tests and the local stack use the same helpers as ``eye-model serve``.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path

from eye_model.config import SERVING_PORT

#: Environment managers ``mlflow models serve`` accepts.
ENV_MANAGERS: tuple[str, ...] = ("local", "virtualenv", "uv", "conda")


def find_free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that is free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def mlflow_executable() -> list[str]:
    """The ``mlflow`` command of this interpreter's environment."""
    candidate = Path(sys.executable).with_name("mlflow")
    if candidate.exists():
        return [str(candidate)]
    return [sys.executable, "-m", "mlflow"]


def server_environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment with this interpreter's ``bin`` first on PATH.

    ``mlflow models serve`` starts ``uvicorn`` by name; from a virtual environment
    that was not activated it would otherwise not be found.
    """
    env = {**os.environ, **(extra or {})}
    bin_dir = str(Path(sys.executable).parent)
    if bin_dir not in env.get("PATH", "").split(os.pathsep):
        env["PATH"] = os.pathsep.join([bin_dir, env.get("PATH", "")]).rstrip(os.pathsep)
    return env


def build_serve_command(
    model_uri: str,
    *,
    port: int = SERVING_PORT,
    host: str = "127.0.0.1",
    env_manager: str = "local",
    workers: int = 1,
    timeout: int | None = None,
) -> list[str]:
    """Build the ``mlflow models serve`` command line.

    Args:
        model_uri: any MLflow model URI (``models:/name/Production``, ``runs:/id/model``, a path).
        port: TCP port of the REST API.
        host: interface to listen on (``0.0.0.0`` for every interface).
        env_manager: ``local`` uses this environment; ``virtualenv``/``uv``/``conda``
            build the model's own environment first.
        workers: number of uvicorn worker processes.
        timeout: request timeout in seconds (MLflow's default when None).

    Returns:
        The argument list.
    """
    if env_manager not in ENV_MANAGERS:
        raise ValueError(f"env_manager={env_manager!r} is unknown; use one of {ENV_MANAGERS}")
    command = [
        *mlflow_executable(),
        "models",
        "serve",
        "-m",
        model_uri,
        "-p",
        str(port),
        "-h",
        host,
        "--env-manager",
        env_manager,
        "-w",
        str(workers),
    ]
    if timeout:
        command += ["-t", str(timeout)]
    return command


def start_process(
    command: Sequence[str],
    *,
    log_path: str | Path | None = None,
    env: Mapping[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``command`` in its own process group, its output going to ``log_path``.

    A process group lets :func:`stop_process` stop the server and every worker it
    spawned, so nothing is left behind.
    """
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115
    try:
        return subprocess.Popen(
            list(command),
            stdout=out,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else server_environment(),
            start_new_session=True,
        )
    finally:
        if log_path:
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


def stop_process(process: subprocess.Popen[bytes], *, grace: float = 20.0) -> int | None:
    """Stop a process started by :func:`start_process` and its whole process group.

    SIGTERM first, and every process of the group gets ``grace`` seconds to shut down
    cleanly (a scoring server delivers its last telemetry then); SIGKILL after that.

    Returns:
        The exit code.
    """
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    if not wait_group_gone(process.pid, grace, process):
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        wait_group_gone(process.pid, 5.0, process)
    try:
        process.wait(timeout=5.0)
    except subprocess.TimeoutExpired:
        pass
    return process.returncode


def score_files(
    url: str, paths: Sequence[Path], *, timeout: float = 60.0
) -> list[dict[str, object]]:
    """POST image files to a model server's ``/invocations`` and return its rows.

    Args:
        url: base URL of the model server (``http://127.0.0.1:8080``).
        paths: image files; only their contents are sent, under their row number.
        timeout: request timeout in seconds.

    Returns:
        One prediction dict per file, in order.
    """
    import base64

    import requests

    rows = [
        [str(i), base64.b64encode(Path(path).read_bytes()).decode("ascii")]
        for i, path in enumerate(paths)
    ]
    payload = {"dataframe_split": {"columns": ["image_id", "image"], "data": rows}}
    response = requests.post(f"{url.rstrip('/')}/invocations", json=payload, timeout=timeout)
    if response.status_code != 200:
        raise RuntimeError(f"{url} answered {response.status_code}: {response.text[:500]}")
    return list(response.json()["predictions"])

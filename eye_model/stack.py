"""The local stack: a tracking server on 5000 and a model server on 8080, in the background.

``eye-model stack up|down|status|logs`` replaces the original docker-compose file
for machines without Docker. State (pid files and logs) lives in one folder,
``EYE_MODEL_HOME`` or ``./.eye-model``.

The embedded default needs nothing installed: a SQLite backend store and a local
artifact folder, both under the state folder.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass
from pathlib import Path

from eye_model.config import SERVING_PORT, TRACKING_PORT
from eye_model.serving import (
    build_serve_command,
    mlflow_executable,
    server_environment,
    start_process,
    wait_for_http,
    wait_group_gone,
)

#: Names of the stack's services.
SERVICES: tuple[str, ...] = ("tracking", "model")


@dataclass(frozen=True)
class StackPaths:
    """Where the stack keeps its state."""

    home: Path

    @classmethod
    def from_env(cls, home: str | Path | None = None) -> StackPaths:
        """``home``, else ``EYE_MODEL_HOME``, else ``./.eye-model``."""
        return cls(Path(home or os.environ.get("EYE_MODEL_HOME") or ".eye-model").resolve())

    @property
    def logs(self) -> Path:
        return self.home / "logs"

    @property
    def backend_db(self) -> Path:
        return self.home / "mlflow.db"

    @property
    def artifacts(self) -> Path:
        return self.home / "mlartifacts"

    def pid_file(self, service: str) -> Path:
        return self.home / f"{service}.pid"

    def log_file(self, service: str) -> Path:
        return self.logs / f"{service}.log"


def build_tracking_command(
    *,
    backend_store_uri: str,
    artifacts_destination: str,
    port: int = TRACKING_PORT,
    host: str = "127.0.0.1",
    app_name: str | None = None,
    workers: int = 1,
) -> list[str]:
    """Build the ``mlflow server`` command line with proxied artifacts.

    Args:
        backend_store_uri: ``sqlite:///...`` (embedded) or ``postgresql://...`` (production).
        artifacts_destination: local folder or ``s3://...``; clients reach it through the server.
        port: TCP port of the tracking server and UI.
        host: interface to listen on.
        app_name: ``basic-auth`` for user/password authentication.
        workers: server worker processes.

    Returns:
        The argument list.
    """
    command = [
        *mlflow_executable(),
        "server",
        "--backend-store-uri",
        backend_store_uri,
        "--artifacts-destination",
        artifacts_destination,
        "--serve-artifacts",
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        str(workers),
    ]
    if app_name:
        command += ["--app-name", app_name]
    return command


def read_pid(paths: StackPaths, service: str) -> int | None:
    """The pid of a running service, or None (a stale pid file is removed)."""
    pid_file = paths.pid_file(service)
    if not pid_file.exists():
        return None
    try:
        pid = int(pid_file.read_text().strip())
        os.kill(pid, 0)
    except (ValueError, ProcessLookupError, PermissionError):
        pid_file.unlink(missing_ok=True)
        return None
    return pid


def start_service(
    paths: StackPaths,
    service: str,
    command: list[str],
    health_url: str,
    *,
    timeout: float = 180.0,
    env: dict[str, str] | None = None,
) -> int:
    """Start one service in the background, record its pid and wait until it is healthy.

    Returns:
        The pid (of an already running service, if there is one).

    Raises:
        RuntimeError: when the service does not become healthy; the message ends
            with the last lines of its log.
    """
    running = read_pid(paths, service)
    if running:
        return running
    paths.logs.mkdir(parents=True, exist_ok=True)
    process = start_process(command, log_path=paths.log_file(service), env=server_environment(env))
    paths.pid_file(service).write_text(f"{process.pid}\n")
    try:
        wait_for_http(health_url, timeout=timeout, process=process)
    except RuntimeError as exc:
        stop_service(paths, service)
        tail = "\n".join(paths.log_file(service).read_text(errors="replace").splitlines()[-20:])
        raise RuntimeError(
            f"{service} server did not start: {exc}\n--- {service}.log ---\n{tail}"
        ) from None
    return process.pid


def stop_service(paths: StackPaths, service: str, *, grace: float = 20.0) -> bool:
    """Stop a service and its whole process group: SIGTERM, then SIGKILL after ``grace`` s.

    Returns:
        Whether it was running.
    """
    pid = read_pid(paths, service)
    paths.pid_file(service).unlink(missing_ok=True)
    if pid is None:
        return False
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pid, sig)
        except (ProcessLookupError, PermissionError):
            break
        if wait_group_gone(pid, wait):
            break
    return True


def start_tracking(
    paths: StackPaths,
    *,
    port: int = TRACKING_PORT,
    host: str = "127.0.0.1",
    backend_store_uri: str | None = None,
    artifacts_destination: str | None = None,
    app_name: str | None = None,
) -> str:
    """Start the tracking server (embedded default: SQLite and a local artifact folder).

    Returns:
        The tracking URI clients use.
    """
    paths.home.mkdir(parents=True, exist_ok=True)
    command = build_tracking_command(
        backend_store_uri=backend_store_uri or f"sqlite:///{paths.backend_db}",
        artifacts_destination=artifacts_destination or str(paths.artifacts),
        port=port,
        host=host,
        app_name=app_name,
    )
    url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
    start_service(paths, "tracking", command, f"{url}/health")
    return url


def start_model_server(
    paths: StackPaths,
    model_uri: str,
    *,
    port: int = SERVING_PORT,
    host: str = "127.0.0.1",
    env_manager: str = "local",
    workers: int = 1,
    env: dict[str, str] | None = None,
) -> str:
    """Start ``mlflow models serve`` for ``model_uri``; returns its base URL."""
    command = build_serve_command(
        model_uri, port=port, host=host, env_manager=env_manager, workers=workers
    )
    url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
    start_service(paths, "model", command, f"{url}/ping", timeout=600, env=env)
    return url


def stack_status(paths: StackPaths) -> dict[str, int | None]:
    """The pid of each service, None where it is not running."""
    return {service: read_pid(paths, service) for service in SERVICES}

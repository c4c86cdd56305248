"""The command lines of the two servers: ``mlflow server`` and ``mlflow models serve``.

``eye-model serve``, ``eye-model stack up``, the tests and ``docker-compose.yml`` run
exactly these (``tests/code/test_compose.py`` compares them).
"""

from __future__ import annotations

from eye_model.config import ENV_MANAGERS, SERVING_PORT, TRACKING_PORT
from eye_model.stack.processes import mlflow_executable


def build_tracking_command(
    *,
    backend_store_uri: str | None,
    artifacts_destination: str,
    port: int = TRACKING_PORT,
    host: str = "127.0.0.1",
    app_name: str | None = None,
    workers: int = 1,
    allowed_hosts: str | None = None,
) -> list[str]:
    """Build the ``mlflow server`` command line with proxied artifacts.

    Args:
        backend_store_uri: ``sqlite:///...`` (embedded) or ``postgresql://...`` (production);
            None leaves it to ``MLFLOW_BACKEND_STORE_URI`` in the server's environment.
        artifacts_destination: local folder or ``s3://...``; clients reach it through the server.
        port: TCP port of the tracking server and UI.
        host: interface to listen on.
        app_name: ``basic-auth`` for user/password authentication.
        workers: server worker processes.
        allowed_hosts: comma-separated Host headers to answer (``--allowed-hosts``).

    Returns:
        The argument list.
    """
    command = [*mlflow_executable(), "server"]
    if backend_store_uri is not None:
        command += ["--backend-store-uri", backend_store_uri]
    command += [
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
    if allowed_hosts:
        command += ["--allowed-hosts", allowed_hosts]
    return command


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

    Raises:
        ValueError: an unknown environment manager.
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

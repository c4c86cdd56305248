"""The stack's services: a tracking server and a model server in the background.

``eye-model stack up|down|status|logs`` starts, stops and reports them; state (pid
files, logs, the auth configuration) lives in the stack's folder
(:class:`~eye_model.stack.config.StackPaths`). The tracking server process never gets
the admin password in its environment (it reads the 0600 ini), and a password in a
PostgreSQL URI is moved out of the command line into ``PGPASSWORD``. The model server
inherits no secret at all: it gets its tracking URI and login, nothing else. A start
that fails stops what it started.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from eye_model.config import DEFAULT_TRACKING_URI, SERVING_PORT, TRACKING_PORT
from eye_model.settings import Settings, env_name, secret_variables, settings_environ
from eye_model.stack.auth import (
    ADMIN_PASSWORD_ENVS,
    ADMIN_PASSWORD_FILE_ENV,
    ADMIN_USERNAME_ENVS,
    check_credentials,
    client_credentials,
    read_admin_credentials,
    read_flask_secret_key,
    render_auth_config,
    write_private_file,
)
from eye_model.stack.commands import build_serve_command, build_tracking_command
from eye_model.stack.config import (
    StackError,
    StackPaths,
    TrackingConfig,
    is_local_path,
    local_path,
    write_stack_state,
)
from eye_model.stack.databases import create_private_file, sqlite_path
from eye_model.stack.processes import (
    local_url,
    read_pid_file,
    server_environment,
    start_process,
    stop_process,
    stop_recorded_process,
    wait_for_http,
    write_pid_file,
)
from eye_model.uris import split_password, uri_scheme

#: Names of the stack's services.
SERVICES: tuple[str, ...] = ("tracking", "model")
#: Variables the tracking server process never gets: the secrets live in the 0600 ini
#: and ``PGPASSWORD`` only, and MLflow's own admin variables would override the ini.
_TRACKING_SERVER_UNSET: tuple[str, ...] = (
    ADMIN_PASSWORD_FILE_ENV,
    *ADMIN_PASSWORD_ENVS,
    *ADMIN_USERNAME_ENVS,
    env_name("backend_store_uri"),
)
#: Variables the model server never inherits: every secret setting (backend store and
#: users database URIs, admin and tracking passwords, the Flask key), the admin's secret
#: file, libpq's password variables and the auth configuration. Its login to the tracking
#: server comes from :func:`model_server_environment` only.
_MODEL_SERVER_UNSET: tuple[str, ...] = tuple(
    dict.fromkeys(
        (
            *secret_variables(),
            ADMIN_PASSWORD_FILE_ENV,
            *ADMIN_PASSWORD_ENVS,
            "PGPASSWORD",
            "PGPASSFILE",
            "MLFLOW_AUTH_CONFIG_PATH",
        )
    )
)


def check_writable_folder(folder: Path, what: str) -> None:
    """Create ``folder`` if needed and fail with the fix when this user cannot write to it."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StackError(f"cannot create the {what} folder {folder}: {exc.strerror}") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise StackError(
            f"the {what} folder {folder} is not writable by this user (uid {os.getuid()}); "
            f"fix it with: sudo chown -R $(id -u):$(id -g) {folder}"
        )


def start_service(
    paths: StackPaths,
    service: str,
    command: list[str],
    health_url: str,
    *,
    timeout: float = 180.0,
    env: dict[str, str] | None = None,
    unset: Sequence[str] = (),
) -> int:
    """Start one service in the background, record its pid and wait until it is healthy.

    Args:
        paths: the stack's state folder.
        service: ``tracking`` or ``model``.
        command: the command line.
        health_url: the URL answering 200 once the service is ready.
        timeout: seconds to wait for it.
        env: variables added to this process's environment.
        unset: variables the service must not inherit from this process (secrets it has
            no use for); ``env`` may still give them.

    Returns:
        The pid (of an already running service, if there is one).

    Raises:
        RuntimeError: when the service does not become healthy; the message ends
            with the last lines of its log.
    """
    running = read_pid_file(paths.pid_file(service))
    if running:
        return running
    paths.logs.mkdir(parents=True, exist_ok=True)
    environment = {k: v for k, v in server_environment().items() if k not in set(unset)}
    environment.update(env or {})
    process = start_process(command, log_path=paths.log_file(service), env=environment)
    write_pid_file(paths.pid_file(service), process.pid)
    try:
        wait_for_http(health_url, timeout=timeout, process=process)
    except RuntimeError as exc:
        stop_process(process)
        _forget(paths, service)
        tail = "\n".join(paths.log_file(service).read_text(errors="replace").splitlines()[-20:])
        raise RuntimeError(
            f"{service} server did not start: {exc}\n--- {service}.log ---\n{tail}"
        ) from None
    return process.pid


def _forget(paths: StackPaths, service: str) -> None:
    """Remove the files of a service that no longer runs (the tracking server's ini too)."""
    paths.pid_file(service).unlink(missing_ok=True)
    if service == "tracking":
        paths.auth_config.unlink(missing_ok=True)


def stop_service(paths: StackPaths, service: str, *, grace: float = 20.0) -> bool:
    """Stop a service and its whole process group: SIGTERM, then SIGKILL after ``grace`` s.

    Only the process its pid file describes is signalled: a stale pid file (another
    program got the pid, the machine restarted) is reported and removed. Stopping the
    tracking server also removes ``basic_auth.ini``, so the admin password is on disk
    only while the server runs.

    Returns:
        Whether it was running.
    """
    was_running = stop_recorded_process(paths.pid_file(service), grace=grace)
    _forget(paths, service)
    return was_running


def stack_status(paths: StackPaths) -> dict[str, dict[str, object] | None]:
    """What runs: None for a service that does not (stale pid files are removed).

    A running service is ``{"pid": ...}``; the model server adds what its supervisor
    records: ``server_pid`` (the current ``mlflow models serve``), ``state``,
    ``restarts``, ``last_restart`` (ISO 8601, UTC) and ``last_cause``.
    """
    # Imported here: `python -m eye_model.stack.supervisor` must find it not yet imported.
    from eye_model.stack.supervisor import read_supervisor_state

    status: dict[str, dict[str, object] | None] = {}
    for service in SERVICES:
        pid = read_pid_file(paths.pid_file(service))
        if pid is None:
            status[service] = None
            continue
        running: dict[str, object] = {"pid": pid}
        if service == "model":
            recorded = read_supervisor_state(paths.supervisor_file(service), pid) or {}
            for key in ("server_pid", "state", "restarts", "last_restart", "last_cause"):
                running[key] = recorded.get(key)
        status[service] = running
    return status


def _reachable_url(host: str, port: int) -> str:
    return local_url(host, port)


def tracking_server_launch(
    paths: StackPaths,
    config: TrackingConfig,
    *,
    settings: Settings,
    port: int = TRACKING_PORT,
    host: str = "127.0.0.1",
) -> tuple[list[str], dict[str, str], list[str]]:
    """Prepare the tracking server: its command, the variables it gets and those it must not.

    For ``basic-auth`` this writes ``<home>/basic_auth.ini`` (0600) with the admin password.
    A password in a PostgreSQL URI moves to ``PGPASSWORD``; any other URI holding a
    password goes to ``MLFLOW_BACKEND_STORE_URI`` instead of the command line, which
    every user of the machine can read.

    Args:
        paths: the stack's state folder.
        config: the configuration (:func:`~eye_model.stack.config.resolve_tracking_config`).
        settings: where the admin password and the Flask secret key come from.
        port: TCP port.
        host: interface to listen on.

    Returns:
        The command, the added variables and the variables to remove.

    Raises:
        StackError: a missing or refused admin password, or an unwritable folder.
    """
    paths.home.mkdir(parents=True, exist_ok=True)
    extra: dict[str, str] = {}
    unset = list(_TRACKING_SERVER_UNSET)
    backend: str | None = config.backend_store_uri
    redacted, db_password = split_password(config.backend_store_uri)
    if db_password is not None and uri_scheme(config.backend_store_uri) == "postgresql":
        backend = redacted
        extra["PGPASSWORD"] = db_password  # libpq reads it; never on a command line
    elif db_password is not None:
        extra[env_name("backend_store_uri")] = config.backend_store_uri
        backend = None
    if is_local_path(config.artifacts_destination):
        check_writable_folder(local_path(config.artifacts_destination), "artifacts")
    if config.authenticated:
        if uri_scheme(config.auth_db_uri) == "sqlite":
            auth_db = sqlite_path(config.auth_db_uri)
            check_writable_folder(auth_db.parent, "auth database")
            # MLflow creates the file with the umask's mode (0644): it holds password hashes.
            create_private_file(auth_db)
        credentials = read_admin_credentials(config, settings)
        write_private_file(paths.auth_config, render_auth_config(config, credentials.password))
        extra["MLFLOW_AUTH_CONFIG_PATH"] = str(paths.auth_config)
        extra[env_name("flask_secret_key")] = read_flask_secret_key(paths, settings)
        unset.append(env_name("auth_admin_password"))
    command = build_tracking_command(
        backend_store_uri=backend,
        artifacts_destination=config.artifacts_destination,
        port=port,
        host=host,
        app_name=config.app_name,
        allowed_hosts=config.allowed_hosts,
    )
    return command, extra, unset


def start_tracking(
    paths: StackPaths,
    *,
    settings: Settings,
    port: int = TRACKING_PORT,
    host: str = "127.0.0.1",
    backend_store_uri: str | None = None,
    artifacts_destination: str | None = None,
    app_name: str | None = None,
    config: TrackingConfig | None = None,
) -> str:
    """Start the tracking server and wait until ``/health`` answers.

    Args:
        paths: the stack's state folder.
        settings: where the admin password and the Flask secret key come from.
        port: TCP port.
        host: interface to listen on.
        backend_store_uri: embedded profile only: another backend store.
        artifacts_destination: embedded profile only: another artifact folder.
        app_name: embedded profile only: an MLflow app.
        config: the full configuration
            (:func:`~eye_model.stack.config.resolve_tracking_config`); overrides the
            three arguments above.

    Returns:
        The tracking URI clients use.

    Raises:
        StackError: a configuration that cannot work (see :func:`tracking_server_launch`),
            or, with authentication, an admin password the server refuses.
        RuntimeError: the server did not become healthy.

    A start that fails leaves nothing behind: the server is stopped, its pid file and
    ``basic_auth.ini`` removed, and ``stack.json`` is written only after a good start.
    """
    config = config or TrackingConfig(
        backend_store_uri=backend_store_uri or f"sqlite:///{paths.backend_db}",
        artifacts_destination=artifacts_destination or str(paths.artifacts),
        app_name=app_name,
    )
    url = _reachable_url(host, port)
    if read_pid_file(paths.pid_file("tracking")) is not None:
        # Keep the running server and its files; only tell the caller where it is.
        return url
    try:
        command, extra, unset = tracking_server_launch(
            paths, config, settings=settings, port=port, host=host
        )
        start_service(paths, "tracking", command, f"{url}/health", env=extra, unset=unset)
        if config.authenticated:
            _check_admin_login(url, config, settings)
    except BaseException:
        # Nothing of a failed start stays behind: the server, its pid file, the ini.
        stop_service(paths, "tracking")
        raise
    write_stack_state(paths, config, url)
    return url


def _check_admin_login(url: str, config: TrackingConfig, settings: Settings) -> None:
    """Wait until the admin can log in; make MLflow's users database private (0600)."""
    credentials = read_admin_credentials(config, settings)
    deadline = time.monotonic() + 120
    # The first requests of a fresh server can be slow (workers warming up).
    while (status := check_credentials(url, credentials)) == 0:
        if time.monotonic() > deadline:
            raise StackError(f"the tracking server at {url} does not answer API requests")
        time.sleep(1)
    if uri_scheme(config.auth_db_uri) == "sqlite":
        # Created before the start; this also covers a file an older version made 0644.
        create_private_file(sqlite_path(config.auth_db_uri))
    if status != 200:
        raise StackError(
            f"the tracking server at {url} answers {status} to user "
            f"{credentials.username!r} with the password from {credentials.source}. The "
            "admin user already existed in the auth database with another password (MLflow "
            "uses the configured one only to create it): use that password, or change it "
            "with the update-password API (see docs/production.md); the server was stopped"
        )


@contextlib.contextmanager
def stopped_on_failure(paths: StackPaths) -> Iterator[None]:
    """Stop the services the block starts when it fails; services already running are kept.

    ``eye-model stack up`` runs in it, so a failed start (a model that does not load, an
    interrupt) leaves no server, pid file nor ``basic_auth.ini`` behind.
    """
    running_before = stack_status(paths)
    try:
        yield
    except BaseException:
        for service in reversed(SERVICES):  # the model server first
            if running_before[service] is None:
                stop_service(paths, service)
        raise


def model_server_environment(
    tracking_url: str, config: TrackingConfig, settings: Settings
) -> dict[str, str]:
    """Variables the model server needs to reach the tracking server (models, telemetry).

    ``MLFLOW_TRACKING_URI`` is the stack's server unless the settings name another one
    (a value other than the default ``http://localhost:5000``). The login is the client
    credentials of the settings (``MLFLOW_TRACKING_USERNAME``/``PASSWORD``, e.g. a
    least-privilege serving user), else with authentication the admin's
    (:func:`~eye_model.stack.auth.client_credentials`). The model server inherits no
    other secret (see ``_MODEL_SERVER_UNSET``): these are all it gets.
    """
    chosen = settings.tracking_uri if settings.tracking_uri != DEFAULT_TRACKING_URI else ""
    login = {
        env_name("tracking_username"): settings.tracking_username,
        env_name("tracking_password"): settings.tracking_password,
    }
    return {
        env_name("tracking_uri"): chosen or tracking_url,
        **{name: value for name, value in login.items() if value},
        **client_credentials(config, settings),
    }


def start_model_server(
    paths: StackPaths,
    model_uri: str,
    *,
    port: int = SERVING_PORT,
    host: str = "127.0.0.1",
    env_manager: str = "local",
    workers: int = 1,
    env: dict[str, str] | None = None,
    metrics_port: int = 0,
) -> str:
    """Start ``mlflow models serve`` for ``model_uri`` under a supervisor; returns its base URL.

    The supervisor (:mod:`eye_model.stack.supervisor`) restarts the server when it or
    a worker dies and records the restarts for :func:`stack_status`. With ``metrics_port``
    the workers serve Prometheus ``/metrics`` there (:mod:`eye_model.metrics`), summed over
    every worker since this start, restarts included.
    """
    from eye_model.stack.supervisor import supervised_command

    env = dict(env or {})
    if metrics_port:
        folder = paths.home / "metrics"
        shutil.rmtree(folder, ignore_errors=True)  # a new server starts its counters at 0
        folder.mkdir(parents=True)
        env.update(
            settings_environ(metrics_port=metrics_port, metrics_host=host, metrics_dir=folder)
        )
    url = _reachable_url(host, port)
    command = supervised_command(
        build_serve_command(
            model_uri, port=port, host=host, env_manager=env_manager, workers=workers
        ),
        name="model server",
        health_url=f"{url}/ping",
        state_file=paths.supervisor_file("model"),
    )
    start_service(
        paths, "model", command, f"{url}/ping", timeout=600, env=env, unset=_MODEL_SERVER_UNSET
    )
    return url

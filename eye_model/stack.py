"""The local stack: a tracking server on 5000 and a model server on 8080, in the background.

``eye-model stack up|down|status|logs`` replaces the original docker-compose file
for machines without Docker (``docker-compose.yml`` holds the same commands for
machines with it). State (pid files, logs, the auth configuration) lives in one
folder, ``EYE_MODEL_HOME`` or ``./.eye-model``.

Two profiles:

- ``embedded`` (default) needs nothing installed: a SQLite backend store and a local
  artifact folder, both under the state folder, no authentication.
- ``production``: a database server as backend store (``postgresql://``), artifacts
  proxied by the tracking server (a local folder or ``s3://``), and MLflow's
  ``basic-auth`` app. The admin password is read from ``EYE_MODEL_ADMIN_PASSWORD_FILE``
  (a secret file), ``EYE_MODEL_ADMIN_PASSWORD``, ``MLFLOW_AUTH_ADMIN_PASSWORD`` or
  ``MLFLOW_TRACKING_PASSWORD``, and written only into a 0600 ``basic_auth.ini`` that
  MLflow reads through ``MLFLOW_AUTH_CONFIG_PATH``. It is never printed nor logged, and
  the tracking server process does not get it in its environment. A password in a
  PostgreSQL URI is moved out of the command line into ``PGPASSWORD``.
"""

from __future__ import annotations

import configparser
import importlib.util
import io
import json
import os
import secrets
import signal
import time
import urllib.error
import urllib.request
from base64 import b64encode
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

from eye_model.config import SERVING_PORT, TRACKING_PORT
from eye_model.serving import (
    build_serve_command,
    mlflow_executable,
    server_environment,
    start_process,
    wait_for_http,
    wait_group_gone,
)
from eye_model.uris import redact_uri, split_password, uri_scheme

#: Names of the stack's services.
SERVICES: tuple[str, ...] = ("tracking", "model")
#: Profiles of the stack.
PROFILES: tuple[str, ...] = ("embedded", "production")
#: MLflow's user/password authentication app (``mlflow server --app-name``).
BASIC_AUTH_APP = "basic-auth"
#: MLflow's function that checks a request's user and password.
BASIC_AUTH_FUNCTION = "mlflow.server.auth:authenticate_request_basic_auth"
DEFAULT_ADMIN_USERNAME = "admin"
#: Permissions MLflow grants a user on resources nobody granted explicitly.
PERMISSIONS: tuple[str, ...] = ("READ", "USE", "EDIT", "MANAGE", "NO_PERMISSIONS")
DEFAULT_PERMISSION = "READ"
#: Backend stores the production profile accepts: database servers, not files.
SERVER_DATABASE_SCHEMES: tuple[str, ...] = ("postgresql", "mysql", "mssql")
#: A secret file holding the admin password (Docker/Kubernetes secrets); read first.
ADMIN_PASSWORD_FILE_ENV = "EYE_MODEL_ADMIN_PASSWORD_FILE"
#: Variables the admin password may come from, after the file, in this order.
ADMIN_PASSWORD_ENVS: tuple[str, ...] = (
    "EYE_MODEL_ADMIN_PASSWORD",
    "MLFLOW_AUTH_ADMIN_PASSWORD",
    "MLFLOW_TRACKING_PASSWORD",
)
#: Variables the admin user name may come from, in this order (default ``admin``).
ADMIN_USERNAME_ENVS: tuple[str, ...] = (
    "EYE_MODEL_ADMIN_USERNAME",
    "MLFLOW_AUTH_ADMIN_USERNAME",
    "MLFLOW_TRACKING_USERNAME",
)
#: MLflow's shortest accepted password.
MIN_PASSWORD_LENGTH = 12
#: Variables the tracking server process never gets: the secrets live in the 0600 ini
#: and ``PGPASSWORD`` only, and MLflow's own admin variables would override the ini.
_TRACKING_SERVER_UNSET: tuple[str, ...] = (
    ADMIN_PASSWORD_FILE_ENV,
    *ADMIN_PASSWORD_ENVS,
    *ADMIN_USERNAME_ENVS,
    "MLFLOW_BACKEND_STORE_URI",
)


class StackError(RuntimeError):
    """A stack setting that cannot work; the message names the setting and the fix."""


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

    @property
    def auth_config(self) -> Path:
        """MLflow's basic-auth configuration (0600: it holds the admin password)."""
        return self.home / "basic_auth.ini"

    @property
    def auth_db(self) -> Path:
        """The embedded user database of the basic-auth app."""
        return self.home / "basic_auth.db"

    @property
    def flask_secret(self) -> Path:
        """The key the basic-auth app signs its CSRF tokens with (0600)."""
        return self.home / "flask_secret_key"

    @property
    def state_file(self) -> Path:
        """How the tracking server was started (no secrets): ``stack.json``."""
        return self.home / "stack.json"

    def pid_file(self, service: str) -> Path:
        return self.home / f"{service}.pid"

    def log_file(self, service: str) -> Path:
        return self.logs / f"{service}.log"


# --- credentials in URIs ---------------------------------------------------------------


def is_local_path(location: str) -> bool:
    """Whether an artifact location is a folder on this machine (a path or ``file://``)."""
    scheme = urlsplit(location).scheme
    return scheme in ("", "file") or (len(scheme) == 1 and os.name == "nt")


def local_path(location: str) -> Path:
    """The folder of a local artifact location (a path or ``file:///...``)."""
    if location.startswith("file://"):
        return Path(unquote(urlsplit(location).path))
    return Path(location).expanduser()


# --- the tracking server's configuration -----------------------------------------------


@dataclass(frozen=True)
class TrackingConfig:
    """How the tracking server is started.

    Attributes:
        profile: ``embedded`` or ``production``.
        backend_store_uri: ``sqlite:///...`` (embedded) or ``postgresql://...`` (production).
        artifacts_destination: where proxied artifacts go: a local folder or ``s3://...``.
        app_name: ``basic-auth`` for user/password authentication, None for none.
        auth_db_uri: the basic-auth user database (``sqlite:///...`` or ``postgresql://...``).
        admin_username: the admin user created on the first start.
        default_permission: what every user may do where nobody granted more.
        allowed_hosts: Host headers the server answers (MLflow's default: localhost and
            private addresses).
    """

    profile: str = "embedded"
    backend_store_uri: str = ""
    artifacts_destination: str = ""
    app_name: str | None = None
    auth_db_uri: str = ""
    admin_username: str = DEFAULT_ADMIN_USERNAME
    default_permission: str = DEFAULT_PERMISSION
    allowed_hosts: str | None = None

    @property
    def authenticated(self) -> bool:
        """Whether the server asks for a user and password."""
        return self.app_name == BASIC_AUTH_APP

    def describe(self) -> dict[str, str | None]:
        """The configuration with every password removed: safe to print and store."""
        return {
            "profile": self.profile,
            "backend_store_uri": redact_uri(self.backend_store_uri),
            "artifacts_destination": redact_uri(self.artifacts_destination),
            "app_name": self.app_name,
            "auth_db_uri": redact_uri(self.auth_db_uri) if self.authenticated else None,
            "admin_username": self.admin_username if self.authenticated else None,
            "default_permission": self.default_permission if self.authenticated else None,
        }


def _first(environ: Mapping[str, str], names: Sequence[str]) -> str:
    for name in names:
        if environ.get(name):
            return environ[name]
    return ""


def resolve_tracking_config(
    paths: StackPaths,
    *,
    profile: str | None = None,
    backend_store_uri: str | None = None,
    artifacts_destination: str | None = None,
    auth_db_uri: str | None = None,
    admin_username: str | None = None,
    default_permission: str | None = None,
    allowed_hosts: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> TrackingConfig:
    """Decide how to start the tracking server from options, then environment variables.

    Args:
        paths: the stack's state folder (embedded stores and the auth files live there).
        profile: ``embedded`` or ``production`` (default ``EYE_MODEL_STACK_PROFILE``, else
            embedded).
        backend_store_uri: production: default ``MLFLOW_BACKEND_STORE_URI`` (required).
        artifacts_destination: default ``<home>/mlartifacts``; production reads
            ``MLFLOW_ARTIFACTS_DESTINATION`` first.
        auth_db_uri: production: default ``EYE_MODEL_AUTH_DB_URI``, else
            ``sqlite:///<home>/basic_auth.db``.
        admin_username: production: default ``EYE_MODEL_ADMIN_USERNAME``,
            ``MLFLOW_AUTH_ADMIN_USERNAME``, ``MLFLOW_TRACKING_USERNAME``, else ``admin``.
        default_permission: production: default ``EYE_MODEL_DEFAULT_PERMISSION``, else READ.
        allowed_hosts: Host headers to answer (MLflow also reads
            ``MLFLOW_SERVER_ALLOWED_HOSTS`` itself).
        environ: environment variables (default ``os.environ``).

    Returns:
        The configuration.

    Raises:
        StackError: an unknown profile or permission, a production profile without a
            database server, or a missing driver.
    """
    env = os.environ if environ is None else environ
    profile = (profile or env.get("EYE_MODEL_STACK_PROFILE") or "embedded").strip().lower()
    if profile not in PROFILES:
        raise StackError(f"profile {profile!r} is unknown; use one of {', '.join(PROFILES)}")
    if profile == "embedded":
        return TrackingConfig(
            profile=profile,
            backend_store_uri=backend_store_uri or f"sqlite:///{paths.backend_db}",
            artifacts_destination=artifacts_destination or str(paths.artifacts),
            allowed_hosts=allowed_hosts,
        )
    backend = backend_store_uri or env.get("MLFLOW_BACKEND_STORE_URI") or ""
    if not backend:
        raise StackError(
            "the production profile needs a database server as backend store: pass "
            "--backend-store-uri postgresql://USER@HOST:5432/DATABASE or set "
            "MLFLOW_BACKEND_STORE_URI (the password can come from PGPASSWORD or ~/.pgpass)"
        )
    if uri_scheme(backend) not in SERVER_DATABASE_SCHEMES:
        raise StackError(
            f"backend store {redact_uri(backend)!r} is not a database server; the production "
            f"profile needs one of {', '.join(s + '://' for s in SERVER_DATABASE_SCHEMES)} "
            "(use the embedded profile for SQLite)"
        )
    permission = (
        (default_permission or env.get("EYE_MODEL_DEFAULT_PERMISSION") or DEFAULT_PERMISSION)
        .strip()
        .upper()
    )
    if permission not in PERMISSIONS:
        raise StackError(
            f"default permission {permission!r} is unknown; use one of {', '.join(PERMISSIONS)}"
        )
    config = TrackingConfig(
        profile=profile,
        backend_store_uri=with_installed_driver(backend),
        artifacts_destination=(
            artifacts_destination or env.get("MLFLOW_ARTIFACTS_DESTINATION") or str(paths.artifacts)
        ),
        app_name=BASIC_AUTH_APP,
        auth_db_uri=with_installed_driver(
            auth_db_uri or env.get("EYE_MODEL_AUTH_DB_URI") or f"sqlite:///{paths.auth_db}"
        ),
        admin_username=admin_username or _first(env, ADMIN_USERNAME_ENVS) or DEFAULT_ADMIN_USERNAME,
        default_permission=permission,
        allowed_hosts=allowed_hosts,
    )
    check_drivers(config)
    return config


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def with_installed_driver(uri: str) -> str:
    """Name the PostgreSQL driver that is installed in a ``postgresql://`` URI.

    SQLAlchemy 2.1 maps a bare ``postgresql://`` to psycopg 3; many installations (and
    eye-model's dev extra) have psycopg2 instead. A bare URI therefore becomes
    ``postgresql+psycopg2://`` when only psycopg2 is installed. Other URIs are unchanged.

    Raises:
        StackError: when neither driver is installed.
    """
    if urlsplit(uri).scheme.lower() != "postgresql":
        return uri
    if _installed("psycopg"):
        return uri
    if _installed("psycopg2"):
        return "postgresql+psycopg2" + uri[len("postgresql") :]
    raise StackError(
        f"{redact_uri(uri)} needs a PostgreSQL driver for Python: pip install 'psycopg[binary]' "
        "(or psycopg2-binary)"
    )


#: The Python module each store scheme (or SQLAlchemy driver) needs, and its package.
_DRIVERS: dict[str, tuple[str, str]] = {
    "postgresql+psycopg2": ("psycopg2", "psycopg2-binary"),
    "postgresql+psycopg": ("psycopg", "psycopg[binary]"),
    "mysql": ("MySQLdb", "mysqlclient"),
    "mysql+mysqldb": ("MySQLdb", "mysqlclient"),
    "mysql+pymysql": ("pymysql", "pymysql"),
    "s3": ("boto3", "boto3"),
    "gs": ("google.cloud.storage", "google-cloud-storage"),
    "wasbs": ("azure.storage.blob", "azure-storage-blob"),
}


def check_drivers(config: TrackingConfig) -> None:
    """Fail early, naming the package, when a store needs a driver that is not installed."""
    uris = [config.backend_store_uri, config.artifacts_destination]
    if config.authenticated:
        uris.append(config.auth_db_uri)
    for uri in uris:
        module, package = _DRIVERS.get(urlsplit(uri).scheme.lower(), ("", ""))
        if module and not _installed(module):
            raise StackError(
                f"{redact_uri(uri)} needs the Python package {package}, which is not installed: "
                f"pip install '{package}'"
            )


# --- the admin password and the auth configuration -------------------------------------


@dataclass(frozen=True)
class AdminCredentials:
    """The admin user and password (the password never shows in a repr)."""

    username: str
    password: str = field(repr=False)
    source: str = ""


def read_admin_password(environ: Mapping[str, str] | None = None) -> tuple[str, str]:
    """Read the admin password: ``EYE_MODEL_ADMIN_PASSWORD_FILE`` first, then the variables.

    Args:
        environ: environment variables (default ``os.environ``).

    Returns:
        The password and where it came from (a variable name, never the value).

    Raises:
        StackError: no password, an unreadable secret file, or a password MLflow refuses;
            the message names the source and never contains the password.
    """
    env = os.environ if environ is None else environ
    secret_file = env.get(ADMIN_PASSWORD_FILE_ENV, "")
    if secret_file:
        source = f"{ADMIN_PASSWORD_FILE_ENV} ({secret_file})"
        try:
            # A trailing newline is what editors and `echo` add, not part of the secret.
            password = Path(secret_file).expanduser().read_text().rstrip("\r\n")
        except OSError as exc:
            raise StackError(
                f"cannot read the admin password from {source}: {exc.strerror}; "
                "check the path and that this user may read it"
            ) from None
    else:
        source = next((name for name in ADMIN_PASSWORD_ENVS if env.get(name)), "")
        if not source:
            raise StackError(
                "the production profile needs an admin password: set EYE_MODEL_ADMIN_PASSWORD, "
                f"or {ADMIN_PASSWORD_FILE_ENV} to a file holding it (at least "
                f"{MIN_PASSWORD_LENGTH} characters)"
            )
        password = env[source]
    if len(password) < MIN_PASSWORD_LENGTH:
        raise StackError(
            f"the admin password from {source} is too short: MLflow needs at least "
            f"{MIN_PASSWORD_LENGTH} characters"
        )
    if password != password.strip() or "\n" in password or "\r" in password:
        raise StackError(
            f"the admin password from {source} starts or ends with blanks or holds a line "
            "break; MLflow's configuration file cannot keep those"
        )
    if password == "password1234":  # the default of old MLflow versions, refused by MLflow
        raise StackError(f"the admin password from {source} is MLflow's old public default")
    return password, source


def read_admin_credentials(
    config: TrackingConfig, environ: Mapping[str, str] | None = None
) -> AdminCredentials:
    """The admin user of ``config`` with the password from the environment."""
    password, source = read_admin_password(environ)
    return AdminCredentials(config.admin_username, password, source)


def _ini_value(value: str) -> str:
    # MLflow reads the file with ConfigParser's default interpolation: '%' must be doubled.
    return value.replace("%", "%%")


def render_auth_config(config: TrackingConfig, admin_password: str | None = None) -> str:
    """The text of MLflow's ``basic_auth.ini`` for ``config``.

    Args:
        config: the tracking configuration (auth database, admin user, default permission).
        admin_password: the admin password; None leaves it out (MLflow then reads
            ``MLFLOW_AUTH_ADMIN_PASSWORD``, as the docker-compose file does).

    Returns:
        The ini text, section ``[mlflow]``.
    """
    parser = configparser.ConfigParser(interpolation=None)
    section: dict[str, str] = {
        "default_permission": config.default_permission,
        "database_uri": _ini_value(config.auth_db_uri),
        "admin_username": _ini_value(config.admin_username),
    }
    if admin_password is not None:
        section["admin_password"] = _ini_value(admin_password)
    section["authorization_function"] = BASIC_AUTH_FUNCTION
    section["grant_default_workspace_access"] = "false"
    parser["mlflow"] = section
    text = io.StringIO()
    parser.write(text)
    return text.getvalue()


def write_private_file(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable and writable by this user only (0600), atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    staged = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    descriptor = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(descriptor, 0o600)  # whatever the umask or an older file said
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        staged.unlink(missing_ok=True)
        raise
    os.replace(staged, path)


def read_flask_secret_key(paths: StackPaths, environ: Mapping[str, str] | None = None) -> str:
    """The key the basic-auth app signs CSRF tokens with: ``MLFLOW_FLASK_SERVER_SECRET_KEY``,
    else one generated on the first start and kept in ``<home>/flask_secret_key`` (0600)."""
    env = os.environ if environ is None else environ
    if env.get("MLFLOW_FLASK_SERVER_SECRET_KEY"):
        return env["MLFLOW_FLASK_SERVER_SECRET_KEY"]
    if paths.flask_secret.is_file():
        key = paths.flask_secret.read_text().strip()
        if key:
            return key
    key = secrets.token_urlsafe(32)
    write_private_file(paths.flask_secret, key + "\n")
    return key


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


def check_credentials(url: str, credentials: AdminCredentials | None, timeout: float = 30.0) -> int:
    """The HTTP status the tracking server answers to an experiment search with these
    credentials (None: anonymously); 200 means accepted, 401 refused, 0 no answer."""
    request = urllib.request.Request(
        f"{url.rstrip('/')}/api/2.0/mlflow/experiments/search?max_results=1"
    )
    if credentials is not None:
        token = b64encode(f"{credentials.username}:{credentials.password}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (urllib.error.URLError, OSError):  # includes timeouts
        return 0


# --- commands and processes -------------------------------------------------------------


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
        unset: variables the service must not inherit (secrets it has no use for).

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
    environment = server_environment(env)
    for name in unset:
        environment.pop(name, None)
    process = start_process(command, log_path=paths.log_file(service), env=environment)
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

    Stopping the tracking server also removes ``basic_auth.ini``, so the admin password
    is on disk only while the server runs.

    Returns:
        Whether it was running.
    """
    pid = read_pid(paths, service)
    paths.pid_file(service).unlink(missing_ok=True)
    if service == "tracking":
        paths.auth_config.unlink(missing_ok=True)
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


def _reachable_url(host: str, port: int) -> str:
    return f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"


def tracking_server_launch(
    paths: StackPaths,
    config: TrackingConfig,
    *,
    port: int = TRACKING_PORT,
    host: str = "127.0.0.1",
    environ: Mapping[str, str] | None = None,
) -> tuple[list[str], dict[str, str], list[str]]:
    """Prepare the tracking server: its command, the variables it gets and those it must not.

    For ``basic-auth`` this writes ``<home>/basic_auth.ini`` (0600) with the admin password.
    A password in a PostgreSQL URI moves to ``PGPASSWORD``; any other URI holding a
    password goes to ``MLFLOW_BACKEND_STORE_URI`` instead of the command line, which
    every user of the machine can read.

    Returns:
        The command, the added variables and the variables to remove.

    Raises:
        StackError: a missing or refused admin password, or an unwritable folder.
    """
    paths.home.mkdir(parents=True, exist_ok=True)
    extra: dict[str, str] = {}
    unset = list(_TRACKING_SERVER_UNSET)
    backend: str | None = config.backend_store_uri
    redacted, db_password = split_password(backend)
    if db_password is not None and uri_scheme(backend) == "postgresql":
        backend = redacted
        extra["PGPASSWORD"] = db_password  # libpq reads it; never on a command line
    elif db_password is not None:
        extra["MLFLOW_BACKEND_STORE_URI"] = backend
        unset.remove("MLFLOW_BACKEND_STORE_URI")
        backend = None
    if is_local_path(config.artifacts_destination):
        check_writable_folder(local_path(config.artifacts_destination), "artifacts")
    if config.authenticated:
        if uri_scheme(config.auth_db_uri) == "sqlite":
            check_writable_folder(
                Path(config.auth_db_uri[len("sqlite:///") :]).parent, "auth database"
            )
        credentials = read_admin_credentials(config, environ)
        write_private_file(paths.auth_config, render_auth_config(config, credentials.password))
        extra["MLFLOW_AUTH_CONFIG_PATH"] = str(paths.auth_config)
        extra["MLFLOW_FLASK_SERVER_SECRET_KEY"] = read_flask_secret_key(paths, environ)
        unset.append("MLFLOW_AUTH_ADMIN_PASSWORD")
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
    port: int = TRACKING_PORT,
    host: str = "127.0.0.1",
    backend_store_uri: str | None = None,
    artifacts_destination: str | None = None,
    app_name: str | None = None,
    config: TrackingConfig | None = None,
    environ: Mapping[str, str] | None = None,
) -> str:
    """Start the tracking server and wait until ``/health`` answers.

    Args:
        paths: the stack's state folder.
        port: TCP port.
        host: interface to listen on.
        backend_store_uri: embedded profile only: another backend store.
        artifacts_destination: embedded profile only: another artifact folder.
        app_name: embedded profile only: an MLflow app.
        config: the full configuration (:func:`resolve_tracking_config`); overrides the
            three arguments above.
        environ: where the admin password is read from (default ``os.environ``).

    Returns:
        The tracking URI clients use.

    Raises:
        StackError: a configuration that cannot work (see :func:`tracking_server_launch`),
            or, with authentication, an admin password the server refuses.
        RuntimeError: the server did not become healthy.
    """
    config = config or TrackingConfig(
        backend_store_uri=backend_store_uri or f"sqlite:///{paths.backend_db}",
        artifacts_destination=artifacts_destination or str(paths.artifacts),
        app_name=app_name,
    )
    url = _reachable_url(host, port)
    already_running = read_pid(paths, "tracking") is not None
    if already_running:
        # Keep the running server and its files; only tell the caller where it is.
        return url
    command, extra, unset = tracking_server_launch(
        paths, config, port=port, host=host, environ=environ
    )
    start_service(paths, "tracking", command, f"{url}/health", env=extra, unset=unset)
    write_stack_state(paths, config, url)
    if config.authenticated:
        credentials = read_admin_credentials(config, environ)
        deadline = time.monotonic() + 120
        # The first requests of a fresh server can be slow (workers warming up).
        while (status := check_credentials(url, credentials)) == 0:
            if time.monotonic() > deadline:
                raise StackError(f"the tracking server at {url} does not answer API requests")
            time.sleep(1)
        if status != 200:
            raise StackError(
                f"the tracking server at {url} answers {status} to user "
                f"{credentials.username!r} with the password from {credentials.source}. The "
                "admin user already existed in the auth database with another password (MLflow "
                "uses the configured one only to create it): use that password, or change it "
                "with the update-password API (see docs/production.md)"
            )
    return url


def write_stack_state(paths: StackPaths, config: TrackingConfig, url: str) -> None:
    """Record how the tracking server runs (no secrets) for ``status`` and ``backup``."""
    state = {"tracking_url": url, **config.describe()}
    paths.state_file.write_text(json.dumps(state, indent=2) + "\n")


def read_stack_state(paths: StackPaths) -> dict[str, str | None]:
    """What :func:`write_stack_state` recorded, or an empty dict."""
    try:
        return dict(json.loads(paths.state_file.read_text()))
    except (OSError, ValueError):
        return {}


def model_server_environment(
    tracking_url: str,
    config: TrackingConfig,
    environ: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Variables the model server needs to reach the tracking server (models, telemetry).

    ``MLFLOW_TRACKING_URI`` defaults to the stack's server. With authentication, the
    client credentials already in the environment (``MLFLOW_TRACKING_USERNAME`` and
    ``MLFLOW_TRACKING_PASSWORD``, for example a least-privilege serving user) are kept;
    otherwise the admin's are used.
    """
    env = os.environ if environ is None else environ
    result = {"MLFLOW_TRACKING_URI": env.get("MLFLOW_TRACKING_URI") or tracking_url}
    if config.authenticated and not (
        env.get("MLFLOW_TRACKING_USERNAME") and env.get("MLFLOW_TRACKING_PASSWORD")
    ):
        credentials = read_admin_credentials(config, env)
        result["MLFLOW_TRACKING_USERNAME"] = credentials.username
        result["MLFLOW_TRACKING_PASSWORD"] = credentials.password
    return result


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
    url = _reachable_url(host, port)
    # The model server has no use for the admin's secret file nor the stack's own variables.
    unset = (ADMIN_PASSWORD_FILE_ENV, "EYE_MODEL_ADMIN_PASSWORD", "MLFLOW_AUTH_ADMIN_PASSWORD")
    start_service(paths, "model", command, f"{url}/ping", timeout=600, env=env, unset=unset)
    return url


def stack_status(paths: StackPaths) -> dict[str, int | None]:
    """The pid of each service, None where it is not running."""
    return {service: read_pid(paths, service) for service in SERVICES}

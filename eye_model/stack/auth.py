"""MLflow's ``basic-auth`` app for the production profile: the admin, the ini file, the keys.

The admin password is read from the settings, in this order: the secret file
(:data:`ADMIN_PASSWORD_FILE_ENV`), then the variables of :data:`ADMIN_PASSWORD_ENVS`
(eye-model's own, ``MLFLOW_AUTH_ADMIN_PASSWORD``, ``MLFLOW_TRACKING_PASSWORD``); it is
written only into a 0600 ``basic_auth.ini`` that MLflow reads through
``MLFLOW_AUTH_CONFIG_PATH``. It is never printed nor logged.
"""

from __future__ import annotations

import configparser
import io
import os
import secrets
import urllib.error
import urllib.request
from base64 import b64encode
from dataclasses import dataclass, field
from pathlib import Path

from eye_model.settings import Settings, env_name
from eye_model.stack.config import StackError, StackPaths, TrackingConfig

#: MLflow's function that checks a request's user and password.
BASIC_AUTH_FUNCTION = "mlflow.server.auth:authenticate_request_basic_auth"
#: A secret file holding the admin password (Docker/Kubernetes secrets); read first.
ADMIN_PASSWORD_FILE_ENV = env_name("admin_password_file")
#: Variables the admin password may come from, after the file, in this order.
ADMIN_PASSWORD_ENVS: tuple[str, ...] = tuple(
    env_name(name) for name in ("admin_password", "auth_admin_password", "tracking_password")
)
#: Variables the admin user name may come from, in this order (default ``admin``).
ADMIN_USERNAME_ENVS: tuple[str, ...] = tuple(
    env_name(name) for name in ("admin_username", "auth_admin_username", "tracking_username")
)
#: MLflow's shortest accepted password.
MIN_PASSWORD_LENGTH = 12


@dataclass(frozen=True)
class AdminCredentials:
    """The admin user and password (the password never shows in a repr)."""

    username: str
    password: str = field(repr=False)
    source: str = ""


def _password_variables(settings: Settings) -> list[tuple[str, str]]:
    """The admin password's variables after the file, in order, with their values."""
    values = (settings.admin_password, settings.auth_admin_password, settings.tracking_password)
    return list(zip(ADMIN_PASSWORD_ENVS, values, strict=True))


def read_admin_password(settings: Settings) -> tuple[str, str]:
    """Read the admin password: the secret file first, then :data:`ADMIN_PASSWORD_ENVS`.

    Args:
        settings: eye-model's settings.

    Returns:
        The password and where it came from (a variable name, never the value).

    Raises:
        StackError: no password, an unreadable secret file, or a password MLflow refuses;
            the message names the source and never contains the password.
    """
    secret_file = settings.admin_password_file
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
        source, password = next(
            ((name, value) for name, value in _password_variables(settings) if value), ("", "")
        )
        if not source:
            raise StackError(
                f"the production profile needs an admin password: set {ADMIN_PASSWORD_ENVS[0]}, "
                f"or {ADMIN_PASSWORD_FILE_ENV} to a file holding it (at least "
                f"{MIN_PASSWORD_LENGTH} characters)"
            )
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


def read_admin_credentials(config: TrackingConfig, settings: Settings) -> AdminCredentials:
    """The admin user of ``config`` with the password from the settings."""
    password, source = read_admin_password(settings)
    return AdminCredentials(config.admin_username, password, source)


def client_credentials(config: TrackingConfig, settings: Settings) -> dict[str, str]:
    """The user and password a client of the tracking server (the model server) logs in with.

    With authentication, the client credentials already set (``MLFLOW_TRACKING_USERNAME``
    and ``MLFLOW_TRACKING_PASSWORD``, for example a least-privilege serving user) are
    kept: nothing is added. Otherwise the admin's are returned. Without authentication,
    nothing.
    """
    if not config.authenticated or (settings.tracking_username and settings.tracking_password):
        return {}
    credentials = read_admin_credentials(config, settings)
    return {
        env_name("tracking_username"): credentials.username,
        env_name("tracking_password"): credentials.password,
    }


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


def read_flask_secret_key(paths: StackPaths, settings: Settings) -> str:
    """The key the basic-auth app signs CSRF tokens with: ``MLFLOW_FLASK_SERVER_SECRET_KEY``,
    else one generated on the first start and kept in ``<home>/flask_secret_key`` (0600)."""
    if settings.flask_secret_key:
        return settings.flask_secret_key
    if paths.flask_secret.is_file():
        key = paths.flask_secret.read_text().strip()
        if key:
            return key
    key = secrets.token_urlsafe(32)
    write_private_file(paths.flask_secret, key + "\n")
    return key


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

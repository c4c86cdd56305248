"""How the stack is configured: its state folder, its profiles and the tracking server's stores.

Two profiles:

- ``embedded`` (default) needs nothing installed: a SQLite backend store and a local
  artifact folder, both under the state folder, no authentication.
- ``production``: a database server as backend store (``postgresql://``), artifacts
  proxied by the tracking server (a local folder or ``s3://``), and MLflow's
  ``basic-auth`` app (see :mod:`eye_model.stack.auth`).

Values come from the command line first, then from :class:`eye_model.settings.Settings`.
"""

from __future__ import annotations

import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from eye_model.settings import PERMISSIONS, STACK_PROFILES, Settings, env_name
from eye_model.uris import redact_uri, uri_scheme

#: Profiles of the stack.
PROFILES: tuple[str, ...] = STACK_PROFILES
#: MLflow's user/password authentication app (``mlflow server --app-name``).
BASIC_AUTH_APP = "basic-auth"
DEFAULT_ADMIN_USERNAME = "admin"
DEFAULT_PERMISSION = "READ"
#: Backend stores the production profile accepts: database servers, not files.
SERVER_DATABASE_SCHEMES: tuple[str, ...] = ("postgresql", "mysql", "mssql")


class StackError(RuntimeError):
    """A stack setting that cannot work; the message names the setting and the fix."""


@dataclass(frozen=True)
class StackPaths:
    """Where the stack keeps its state (pid files, logs, the auth configuration)."""

    home: Path

    @classmethod
    def from_settings(cls, settings: Settings, home: str | Path | None = None) -> StackPaths:
        """``home`` when given, else :attr:`Settings.home` (default ``./.eye-model``)."""
        return cls(Path(home).expanduser().resolve() if home else settings.home)

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
        """The pid file of ``service`` (JSON: pid, start time, command line)."""
        return self.home / f"{service}.pid"

    def log_file(self, service: str) -> Path:
        return self.logs / f"{service}.log"

    def supervisor_file(self, service: str) -> Path:
        """What the supervisor of ``service`` records: its restarts and their causes."""
        return self.home / f"{service}.supervisor.json"


def is_local_path(location: str) -> bool:
    """Whether an artifact location is a folder on this machine (a path or ``file://``)."""
    scheme = urlsplit(location).scheme
    return scheme in ("", "file") or (len(scheme) == 1 and os.name == "nt")


def local_path(location: str) -> Path:
    """The folder of a local artifact location (a path or ``file:///...``)."""
    if location.startswith("file://"):
        return Path(unquote(urlsplit(location).path))
    return Path(location).expanduser()


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


def default_admin_username(settings: Settings) -> str:
    """The admin user: eye-model's admin user setting, ``MLFLOW_AUTH_ADMIN_USERNAME``,
    ``MLFLOW_TRACKING_USERNAME``, else ``admin``."""
    return (
        settings.admin_username
        or settings.auth_admin_username
        or settings.tracking_username
        or DEFAULT_ADMIN_USERNAME
    )


def resolve_tracking_config(
    paths: StackPaths,
    *,
    settings: Settings,
    profile: str | None = None,
    backend_store_uri: str | None = None,
    artifacts_destination: str | None = None,
    auth_db_uri: str | None = None,
    admin_username: str | None = None,
    default_permission: str | None = None,
    allowed_hosts: str | None = None,
) -> TrackingConfig:
    """Decide how to start the tracking server from options, then settings.

    Args:
        paths: the stack's state folder (embedded stores and the auth files live there).
        settings: eye-model's settings (the defaults of every option below).
        profile: ``embedded`` or ``production`` (default: the settings' stack profile).
        backend_store_uri: production: default ``MLFLOW_BACKEND_STORE_URI`` (required).
        artifacts_destination: default ``<home>/mlartifacts``; production reads
            ``MLFLOW_ARTIFACTS_DESTINATION`` first.
        auth_db_uri: production: default the settings' auth database, else
            ``sqlite:///<home>/basic_auth.db``.
        admin_username: production: default :func:`default_admin_username`.
        default_permission: production: default the settings' default permission (READ).
        allowed_hosts: Host headers to answer (MLflow also reads
            ``MLFLOW_SERVER_ALLOWED_HOSTS`` itself).

    Returns:
        The configuration.

    Raises:
        StackError: an unknown profile or permission, a production profile without a
            database server, or a missing driver.
    """
    profile = (profile or settings.stack_profile).strip().lower()
    if profile not in PROFILES:
        raise StackError(f"profile {profile!r} is unknown; use one of {', '.join(PROFILES)}")
    if profile == "embedded":
        return TrackingConfig(
            profile=profile,
            backend_store_uri=backend_store_uri or f"sqlite:///{paths.backend_db}",
            artifacts_destination=artifacts_destination or str(paths.artifacts),
            allowed_hosts=allowed_hosts,
        )
    backend = backend_store_uri or settings.backend_store_uri
    if not backend:
        raise StackError(
            "the production profile needs a database server as backend store: pass "
            "--backend-store-uri postgresql://USER@HOST:5432/DATABASE or set "
            f"{env_name('backend_store_uri')} (the password can come from PGPASSWORD or "
            "~/.pgpass)"
        )
    if uri_scheme(backend) not in SERVER_DATABASE_SCHEMES:
        raise StackError(
            f"backend store {redact_uri(backend)!r} is not a database server; the production "
            f"profile needs one of {', '.join(s + '://' for s in SERVER_DATABASE_SCHEMES)} "
            "(use the embedded profile for SQLite)"
        )
    permission = (default_permission or settings.default_permission).strip().upper()
    if permission not in PERMISSIONS:
        raise StackError(
            f"default permission {permission!r} is unknown; use one of {', '.join(PERMISSIONS)}"
        )
    config = TrackingConfig(
        profile=profile,
        backend_store_uri=with_installed_driver(backend),
        artifacts_destination=(
            artifacts_destination or settings.artifacts_destination or str(paths.artifacts)
        ),
        app_name=BASIC_AUTH_APP,
        auth_db_uri=with_installed_driver(
            auth_db_uri or settings.auth_db_uri or f"sqlite:///{paths.auth_db}"
        ),
        admin_username=admin_username or default_admin_username(settings),
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

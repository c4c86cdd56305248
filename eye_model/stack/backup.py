"""Backup and restore of the tracking data: backend store, artifacts and users.

A backup is a folder:

- ``backend.pgdump`` (``pg_dump --format=custom`` of a PostgreSQL backend store) or
  ``backend.sqlite`` (a consistent copy of a SQLite store, made with SQLite's online
  backup API, so the tracking server may keep running);
- ``artifacts.tar.gz``: the artifacts folder the tracking server proxies (an object
  store such as ``s3://`` is not copied: use the bucket's versioning or replication);
- ``auth.sqlite`` or ``auth.pgdump``: the basic-auth users and permissions, if any;
- ``manifest.json``, written last: what each file is, its size and SHA-256, the store
  URIs without passwords, and the MLflow version. A folder without it is incomplete.

Restore goes into empty targets only (a new database, a missing or empty folder), so
it never mixes two histories; then start a tracking server on them.

Database passwords are never passed on a command line nor written: ``pg_dump`` and
``pg_restore`` get them through ``PGPASSWORD`` (or use ``~/.pgpass``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import shutil
import sqlite3
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from eye_model.settings import Settings, env_name
from eye_model.stack.config import (
    StackError,
    StackPaths,
    is_local_path,
    local_path,
    read_stack_state,
)
from eye_model.uris import redact_uri, split_password, uri_scheme

logger = logging.getLogger(__name__)

#: Name of the manifest file of a backup folder.
MANIFEST = "manifest.json"
#: Version of the backup layout (``format`` in the manifest).
BACKUP_FORMAT = 1
#: Seconds a database dump or restore may take.
DB_TIMEOUT = 3600


class BackupError(StackError):
    """A backup or restore that cannot be done; the message names the problem and the fix."""


@dataclass(frozen=True)
class StoreLocations:
    """Where a tracking server keeps its data.

    Attributes:
        backend_store_uri: ``postgresql://...`` or ``sqlite:///...``.
        artifacts_destination: the proxied artifact folder (or ``s3://...``, not copied).
        auth_db_uri: the basic-auth user database; empty when there is none.
    """

    backend_store_uri: str
    artifacts_destination: str
    auth_db_uri: str = ""


def locate_stores(
    home: str | Path | None = None,
    *,
    settings: Settings,
    backend_store_uri: str | None = None,
    artifacts_destination: str | None = None,
    auth_db_uri: str | None = None,
) -> StoreLocations:
    """Find the stores: explicit values and settings, else the stack's state.

    When a backend store is given (argument or ``MLFLOW_BACKEND_STORE_URI``), the other
    locations come from their arguments or the settings' artifact destination and auth
    database only (no auth database when neither is set), so nothing is mixed in from
    an unrelated state folder. Otherwise every location not given comes from what
    ``eye-model stack up`` recorded in ``<home>/stack.json``, else from the embedded
    defaults under ``home``.

    Args:
        home: the stack's state folder (default: the settings' home).
        settings: eye-model's settings (the defaults of the locations).
        backend_store_uri: the backend store.
        artifacts_destination: the artifact folder.
        auth_db_uri: the basic-auth database ("" for none).

    Returns:
        The locations.

    Raises:
        BackupError: a backend store without an artifact destination.
    """
    backend = backend_store_uri or settings.backend_store_uri
    artifacts = artifacts_destination or settings.artifacts_destination
    auth = auth_db_uri if auth_db_uri is not None else (settings.auth_db_uri or None)
    if backend:
        if not artifacts:
            raise BackupError(
                "give the artifact folder with --artifacts-destination (or "
                f"{env_name('artifacts_destination')}) together with the backend store"
            )
        return StoreLocations(backend, artifacts, auth or "")
    paths = StackPaths.from_settings(settings, home)
    state = read_stack_state(paths)
    auth_default = f"sqlite:///{paths.auth_db}" if paths.auth_db.exists() else ""
    return StoreLocations(
        backend_store_uri=state.get("backend_store_uri") or f"sqlite:///{paths.backend_db}",
        artifacts_destination=artifacts
        or state.get("artifacts_destination")
        or str(paths.artifacts),
        auth_db_uri=auth if auth is not None else state.get("auth_db_uri") or auth_default,
    )


# --- database helpers --------------------------------------------------------------------


def sqlite_path(uri: str) -> Path:
    """The file of a ``sqlite:///relative`` or ``sqlite:////absolute`` URI."""
    if not uri.startswith("sqlite:///"):
        raise BackupError(f"{uri!r} is not a SQLite file URI (sqlite:///PATH)")
    return Path(unquote(uri[len("sqlite:///") :].split("?", 1)[0]))


def libpq_connection(uri: str) -> tuple[str, dict[str, str]]:
    """A libpq connection URI without password, and the environment carrying the password.

    ``postgresql+psycopg2://`` with a password in the user part becomes
    ``postgresql://user@host/db`` and ``{"PGPASSWORD": <the password>}`` (empty when the URI
    holds no password: libpq then uses ``PGPASSWORD`` or ``~/.pgpass`` from the environment).
    """
    without, password = split_password(uri)
    parts = urlsplit(without)
    dsn = "postgresql" + without[len(parts.scheme) :]
    return dsn, ({"PGPASSWORD": password} if password is not None else {})


def _pg_tool(name: str) -> str:
    found = shutil.which(name)
    if not found:
        raise BackupError(
            f"{name} is not on PATH: install the PostgreSQL client tools of the server's major "
            "version or newer (Debian/Ubuntu: apt-get install postgresql-client)"
        )
    return found


def _run_pg(command: list[str], secret_env: dict[str, str], what: str) -> str:
    env = {**os.environ, **secret_env}
    result = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=DB_TIMEOUT, check=False
    )
    if result.returncode != 0:
        message = result.stderr.strip().splitlines()[-5:]
        raise BackupError(f"{what} failed (exit {result.returncode}): {' '.join(message)}")
    return result.stdout


def postgres_table_count(uri: str) -> int:
    """How many tables the database of ``uri`` holds outside the system schemas."""
    dsn, secret = libpq_connection(uri)
    sql = (
        "SELECT count(*) FROM information_schema.tables "
        "WHERE table_schema NOT IN ('pg_catalog', 'information_schema')"
    )
    out = _run_pg(
        [_pg_tool("psql"), "--no-psqlrc", "-tA", "-d", dsn, "-c", sql],
        secret,
        f"reading {redact_uri(uri)}",
    )
    return int(out.strip() or 0)


def dump_postgres(uri: str, target: Path) -> None:
    """``pg_dump --format=custom`` of the database of ``uri`` into ``target``."""
    dsn, secret = libpq_connection(uri)
    command = [
        _pg_tool("pg_dump"),
        "--format=custom",
        "--no-owner",
        "--no-privileges",
        "--file",
        str(target),
        "--dbname",
        dsn,
    ]
    _run_pg(command, secret, f"pg_dump of {redact_uri(uri)}")


def restore_postgres(dump: Path, uri: str) -> None:
    """``pg_restore`` a custom-format dump into the (empty) database of ``uri``."""
    dsn, secret = libpq_connection(uri)
    command = [
        _pg_tool("pg_restore"),
        "--no-owner",
        "--no-privileges",
        "--exit-on-error",
        "--single-transaction",
        "--dbname",
        dsn,
        str(dump),
    ]
    _run_pg(command, secret, f"pg_restore into {redact_uri(uri)}")


def copy_sqlite(source: Path, target: Path) -> None:
    """A consistent copy of a SQLite database, even while a server writes to it."""
    target.parent.mkdir(parents=True, exist_ok=True)
    src = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
    try:
        dst = sqlite3.connect(target)
        try:
            src.backup(dst)
        finally:
            dst.close()
    finally:
        src.close()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _file_entry(path: Path) -> dict[str, Any]:
    return {"file": path.name, "bytes": path.stat().st_size, "sha256": _sha256(path)}


def _dump_database(uri: str, out_dir: Path, stem: str) -> dict[str, Any]:
    kind = uri_scheme(uri)
    if kind == "postgresql":
        target = out_dir / f"{stem}.pgdump"
        dump_postgres(uri, target)
    elif kind == "sqlite":
        source = sqlite_path(uri)
        if not source.is_file():
            raise BackupError(f"the SQLite store {source} does not exist; check the URI")
        target = out_dir / f"{stem}.sqlite"
        copy_sqlite(source, target)
    else:
        raise BackupError(
            f"backing up a {kind} store is not supported: use that database's own dump tool "
            "(for MySQL: mysqldump --single-transaction)"
        )
    return {"kind": kind, "uri": redact_uri(uri), **_file_entry(target)}


# --- backup and restore -------------------------------------------------------------------


def backup_stores(out_dir: str | Path, stores: StoreLocations) -> dict[str, Any]:
    """Back up the backend store, the artifact folder and the auth database into ``out_dir``.

    Args:
        out_dir: a new or empty folder.
        stores: where the data is (:func:`locate_stores`).

    Returns:
        The manifest (also written to ``out_dir/manifest.json``).

    Raises:
        BackupError: a non-empty ``out_dir``, a missing store or tool, or a failed dump.
    """
    from importlib.metadata import version

    out = Path(out_dir).expanduser().resolve()
    if out.exists() and any(out.iterdir()):
        raise BackupError(f"{out} is not empty; back up into a new folder")
    # The dumps hold every run and the users' password hashes: this user only.
    out.mkdir(parents=True, exist_ok=True, mode=0o700)
    out.chmod(0o700)
    manifest: dict[str, Any] = {
        "format": BACKUP_FORMAT,
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "mlflow_version": version("mlflow"),
        "eye_model_version": version("eye-model"),
        "backend": _dump_database(stores.backend_store_uri, out, "backend"),
    }
    destination = stores.artifacts_destination
    if is_local_path(destination):
        folder = local_path(destination)
        archive = out / "artifacts.tar.gz"
        files = 0
        with tarfile.open(archive, "w:gz") as tar:
            if folder.is_dir():
                for path in sorted(folder.rglob("*")):
                    tar.add(path, arcname=str(path.relative_to(folder)), recursive=False)
                    files += path.is_file()
        manifest["artifacts"] = {
            "kind": "folder",
            "destination": str(folder),
            "files": files,
            **_file_entry(archive),
        }
    else:
        logger.warning(
            "artifacts in %s are not copied: back up the object store with its own versioning "
            "or replication",
            redact_uri(destination),
        )
        manifest["artifacts"] = {"kind": "object-store", "destination": redact_uri(destination)}
    if stores.auth_db_uri:
        manifest["auth"] = _dump_database(stores.auth_db_uri, out, "auth")
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    for path in out.iterdir():
        path.chmod(0o600)
    logger.info("backed up %s into %s", redact_uri(stores.backend_store_uri), out)
    return manifest


def read_manifest(backup_dir: str | Path) -> dict[str, Any]:
    """Read and check a backup folder: the manifest exists and every file matches its hash."""
    folder = Path(backup_dir).expanduser()
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except FileNotFoundError:
        raise BackupError(
            f"{folder} has no {MANIFEST}: it is not a backup, or the backup did not finish"
        ) from None
    if manifest.get("format") != BACKUP_FORMAT:
        raise BackupError(f"{folder}: backup format {manifest.get('format')} is not supported")
    for part in ("backend", "artifacts", "auth"):
        entry = manifest.get(part) or {}
        if "file" in entry:
            path = folder / entry["file"]
            if not path.is_file() or _sha256(path) != entry["sha256"]:
                raise BackupError(f"{path} is missing or damaged (its SHA-256 does not match)")
    return manifest


def _check_empty_database(entry: dict[str, Any], uri: str, what: str) -> None:
    kind = uri_scheme(uri)
    if kind != entry["kind"]:
        raise BackupError(
            f"the backup holds a {entry['kind']} {what}, and {redact_uri(uri)} is {kind}; "
            f"restore into a {entry['kind']} database"
        )
    if kind == "postgresql":
        tables = postgres_table_count(uri)
        if tables:
            raise BackupError(
                f"{redact_uri(uri)} is not empty ({tables} tables); restore into a new empty "
                "database (createdb NAME) and point the tracking server at it"
            )
    else:
        target = sqlite_path(uri)
        if target.exists() and target.stat().st_size > 0:
            raise BackupError(f"{target} already exists; restore into a new file")


def _restore_database(entry: dict[str, Any], folder: Path, uri: str) -> None:
    source = folder / entry["file"]
    if entry["kind"] == "postgresql":
        restore_postgres(source, uri)
    else:
        copy_sqlite(source, sqlite_path(uri))


def restore_stores(backup_dir: str | Path, stores: StoreLocations) -> dict[str, Any]:
    """Restore a backup into empty stores.

    Every target is checked before anything is written: the backend (and auth) database
    must be empty (PostgreSQL: an existing database without tables; SQLite: no file), the
    artifact folder missing or empty.

    Args:
        backup_dir: a folder written by :func:`backup_stores`.
        stores: where to restore to.

    Returns:
        What was restored: the manifest's parts and the targets (no passwords).

    Raises:
        BackupError: a damaged backup, a non-empty or mismatched target, or a failed restore.
    """
    folder = Path(backup_dir).expanduser().resolve()
    manifest = read_manifest(folder)
    _check_empty_database(manifest["backend"], stores.backend_store_uri, "backend store")
    auth = manifest.get("auth")
    if auth and not stores.auth_db_uri:
        raise BackupError(
            "the backup holds a basic-auth user database: give the target with --auth-db-uri"
        )
    if auth:
        _check_empty_database(auth, stores.auth_db_uri, "auth database")
    artifacts = manifest["artifacts"]
    target_folder: Path | None = None
    if artifacts["kind"] == "folder":
        if not is_local_path(stores.artifacts_destination):
            raise BackupError(
                f"the backup holds an artifact folder; {redact_uri(stores.artifacts_destination)}"
                " is not a local folder: restore into a folder, then copy it to the object store"
            )
        target_folder = local_path(stores.artifacts_destination).resolve()
        if target_folder.exists() and any(target_folder.iterdir()):
            raise BackupError(f"{target_folder} is not empty; restore into a new folder")
    _restore_database(manifest["backend"], folder, stores.backend_store_uri)
    if auth:
        _restore_database(auth, folder, stores.auth_db_uri)
    if target_folder is not None:
        target_folder.mkdir(parents=True, exist_ok=True)
        with tarfile.open(folder / artifacts["file"], "r:gz") as tar:
            tar.extractall(target_folder, filter="data")  # no absolute paths, no escapes
    logger.info("restored %s into %s", folder, redact_uri(stores.backend_store_uri))
    return {
        "backup": str(folder),
        "created_at": manifest["created_at"],
        "backend_store_uri": redact_uri(stores.backend_store_uri),
        "artifacts_destination": str(target_folder) if target_folder else None,
        "auth_db_uri": redact_uri(stores.auth_db_uri) if auth else None,
    }

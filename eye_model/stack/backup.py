"""Backup and restore of the tracking data: backend store, artifacts and users.

A backup is a folder (0700, files 0600):

- ``backend.pgdump`` (``pg_dump --format=custom`` of a PostgreSQL backend store) or
  ``backend.sqlite`` (a consistent copy of a SQLite store, made with SQLite's online
  backup API, so the tracking server may keep running);
- ``artifacts.tar.gz``: the artifacts folder the tracking server proxies (an object
  store such as ``s3://`` is not copied: use the bucket's versioning or replication);
- ``auth.sqlite`` or ``auth.pgdump``: the basic-auth users and permissions;
- ``manifest.json``, written last (:mod:`eye_model.stack.manifest`).

The stores are found the way ``eye-model stack up`` finds them, so a stack that runs
with a login always has its users database backed up; a backup that cannot find it
warns and records ``"auth": {"kind": "missing"}``.

Restore goes into empty targets only (a new database, a missing or empty folder), so it
never mixes two histories, and it is all or nothing: files are written under temporary
names next to their targets and moved into place at the end, and when any step fails
everything written is removed (the tables a PostgreSQL restore created are dropped), so
the same command can simply be run again.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import secrets
import shutil
import sqlite3
import tarfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from eye_model.settings import Settings, env_name
from eye_model.stack.config import (
    BASIC_AUTH_APP,
    SERVER_DATABASE_SCHEMES,
    StackPaths,
    is_local_path,
    local_path,
    read_stack_state,
)
from eye_model.stack.databases import (
    BackupError,
    copy_sqlite,
    drop_postgres_objects,
    dump_postgres,
    list_postgres_objects,
    postgres_table_count,
    restore_postgres,
    sqlite_path,
)
from eye_model.stack.manifest import BACKUP_FORMAT, MANIFEST, file_entry, read_manifest
from eye_model.uris import redact_uri, uri_scheme

logger = logging.getLogger(__name__)

__all__ = [
    "BACKUP_FORMAT",
    "MANIFEST",
    "BackupError",
    "StoreLocations",
    "backup_stores",
    "locate_stores",
    "read_manifest",
    "restore_stores",
]

#: Errors of files, archives and SQLite that a backup or restore turns into one line.
_IO_ERRORS = (OSError, EOFError, tarfile.TarError, zlib.error, sqlite3.Error)


@dataclass(frozen=True)
class StoreLocations:
    """Where a tracking server keeps its data.

    Attributes:
        backend_store_uri: ``postgresql://...`` or ``sqlite:///...``.
        artifacts_destination: the proxied artifact folder (or ``s3://...``, not copied).
        auth_db_uri: the basic-auth user database; empty when there is none.
        auth_searched: where the users database was looked for in vain although the
            stack runs with a login (empty when it was found or is not expected).
    """

    backend_store_uri: str
    artifacts_destination: str
    auth_db_uri: str = ""
    auth_searched: tuple[str, ...] = ()


def _same_store(recorded: str | None, uri: str) -> bool:
    """Whether a recorded (password-free) URI names the store of ``uri`` (drivers aside)."""
    if not recorded:
        return False

    def normal(value: str) -> str:
        redacted = redact_uri(value)
        return uri_scheme(value) + redacted[len(urlsplit(redacted).scheme) :]

    return normal(recorded) == normal(uri)


def _exists(uri: str) -> bool:
    """Whether a users database is there: a SQLite file exists; a server is assumed to."""
    return uri_scheme(uri) != "sqlite" or sqlite_path(uri).is_file()


def locate_stores(
    home: str | Path | None = None,
    *,
    settings: Settings,
    backend_store_uri: str | None = None,
    artifacts_destination: str | None = None,
    auth_db_uri: str | None = None,
) -> StoreLocations:
    """Find the stores as ``eye-model stack up`` does: options, settings, then the stack.

    The backend store is the argument, else ``MLFLOW_BACKEND_STORE_URI``, else what
    ``stack up`` recorded in ``<home>/stack.json``, else the embedded SQLite file. The
    recorded artifact folder and users database are used when that record describes the
    same backend store, so nothing is mixed in from an unrelated state folder. The users
    database is then the argument ("" for none), the settings' auth database, the
    recorded one, else ``<home>/basic_auth.db`` when it exists; when none is found and
    the stack runs with a login (production profile, a recorded basic-auth app, or a
    database server as backend), :attr:`StoreLocations.auth_searched` says where it was
    looked for.

    Args:
        home: the stack's state folder (default: the settings' home).
        settings: eye-model's settings (the defaults of the locations).
        backend_store_uri: the backend store.
        artifacts_destination: the artifact folder.
        auth_db_uri: the basic-auth database ("" for none).

    Returns:
        The locations.

    Raises:
        BackupError: a backend store given without an artifact folder that can be found.
    """
    paths = StackPaths.from_settings(settings, home)
    state = read_stack_state(paths)
    given = backend_store_uri or settings.backend_store_uri
    recorded = state if not given or _same_store(state.get("backend_store_uri"), given) else {}
    backend = given or recorded.get("backend_store_uri") or f"sqlite:///{paths.backend_db}"
    artifacts = (
        artifacts_destination
        or settings.artifacts_destination
        or recorded.get("artifacts_destination")
        or (str(paths.artifacts) if not given or paths.artifacts.is_dir() else "")
    )
    if not artifacts:
        raise BackupError(
            "give the artifact folder with --artifacts-destination (or "
            f"{env_name('artifacts_destination')}) together with the backend store"
        )
    if auth_db_uri is not None or settings.auth_db_uri:
        chosen = auth_db_uri if auth_db_uri is not None else settings.auth_db_uri
        return StoreLocations(backend, artifacts, chosen)
    with_login = recorded.get("app_name") == BASIC_AUTH_APP
    candidates = [recorded.get("auth_db_uri") if with_login else None]
    candidates.append(f"sqlite:///{paths.auth_db}")
    searched = tuple(dict.fromkeys(uri for uri in candidates if uri))
    found = next((uri for uri in searched if _exists(uri)), "")
    expected = (
        with_login
        or settings.stack_profile == "production"
        or uri_scheme(backend) in SERVER_DATABASE_SCHEMES
    )
    return StoreLocations(
        backend, artifacts, found, tuple(redact_uri(uri) for uri in searched) if expected else ()
    )


# --- backup ---------------------------------------------------------------------------------


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
    return {"kind": kind, "uri": redact_uri(uri), **file_entry(target)}


def _archive_artifacts(destination: str, out: Path) -> dict[str, Any]:
    if not is_local_path(destination):
        logger.warning(
            "artifacts in %s are not copied: back up the object store with its own versioning "
            "or replication",
            redact_uri(destination),
        )
        return {"kind": "object-store", "destination": redact_uri(destination)}
    folder = local_path(destination)
    archive = out / "artifacts.tar.gz"
    files = 0
    with tarfile.open(archive, "w:gz") as tar:
        if folder.is_dir():
            for path in sorted(folder.rglob("*")):
                tar.add(path, arcname=str(path.relative_to(folder)), recursive=False)
                files += path.is_file()
    return {"kind": "folder", "destination": str(folder), "files": files, **file_entry(archive)}


def _auth_part(stores: StoreLocations, out: Path) -> dict[str, Any] | None:
    if stores.auth_db_uri:
        return _dump_database(stores.auth_db_uri, out, "auth")
    if not stores.auth_searched:
        return None
    logger.warning(
        "warning: the users database (basic-auth) was not found at %s; this backup has no "
        "users nor permissions: give it with --auth-db-uri (or %s)",
        " or ".join(stores.auth_searched),
        env_name("auth_db_uri"),
    )
    return {"kind": "missing", "searched": list(stores.auth_searched)}


def backup_stores(out_dir: str | Path, stores: StoreLocations) -> dict[str, Any]:
    """Back up the backend store, the artifact folder and the auth database into ``out_dir``.

    A backup that fails part way removes what it wrote.

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
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise BackupError(f"{out} is not empty; back up into a new folder")
    created = not out.exists()
    try:
        # The dumps hold every run and the users' password hashes: this user only.
        out.mkdir(parents=True, exist_ok=True, mode=0o700)
        out.chmod(0o700)
        manifest: dict[str, Any] = {
            "format": BACKUP_FORMAT,
            "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "mlflow_version": version("mlflow"),
            "eye_model_version": version("eye-model"),
            "backend": _dump_database(stores.backend_store_uri, out, "backend"),
            "artifacts": _archive_artifacts(stores.artifacts_destination, out),
        }
        auth = _auth_part(stores, out)
        if auth is not None:
            manifest["auth"] = auth
        for path in out.iterdir():
            path.chmod(0o600)
        descriptor = os.open(out / MANIFEST, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(json.dumps(manifest, indent=2) + "\n")
    except BaseException as exc:
        _remove_backup(out, created)
        if isinstance(exc, _IO_ERRORS) and not isinstance(exc, BackupError):
            raise BackupError(f"the backup into {out} failed and was removed: {exc}") from None
        raise
    logger.info("backed up %s into %s", redact_uri(stores.backend_store_uri), out)
    return manifest


def _remove_backup(out: Path, created: bool) -> None:
    if created:
        shutil.rmtree(out, ignore_errors=True)
    elif out.is_dir():
        for path in out.iterdir():
            path.unlink(missing_ok=True)


# --- restore --------------------------------------------------------------------------------


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


class _Restore:
    """What a restore wrote so far, to move into place at the end or to take back."""

    def __init__(self) -> None:
        self.undo: list[Callable[[], None]] = []
        self.moves: list[tuple[Path, Path]] = []
        self.token = secrets.token_hex(4)

    def make_parents(self, path: Path) -> None:
        """Create the missing folders above ``path``, to be removed again on failure."""
        missing = [p for p in reversed(path.parents) if not p.exists()]
        for folder in missing:
            folder.mkdir()
            self.undo.append(partial(_remove_empty_folder, folder))

    def staged(self, target: Path) -> Path:
        """A temporary name next to ``target``, removed on failure."""
        self.make_parents(target)
        staged = target.with_name(f".{target.name}.restore-{self.token}")
        self.undo.append(partial(_remove_path, staged))
        return staged

    def database(self, entry: dict[str, Any], folder: Path, uri: str) -> None:
        source = folder / entry["file"]
        if entry["kind"] == "postgresql":
            before = list_postgres_objects(uri)
            restore_postgres(source, uri)  # one transaction: nothing is left if it fails
            self.undo.append(partial(_drop_new_objects, uri, before))
        else:
            target = sqlite_path(uri).resolve()
            staged = self.staged(target)
            copy_sqlite(source, staged)  # 0600: the users database holds password hashes
            self.moves.append((staged, target))

    def artifacts(self, archive: Path, target: Path) -> None:
        staged = self.staged(target)
        staged.mkdir()
        try:
            with tarfile.open(archive, "r:gz") as tar:
                tar.extractall(staged, filter="data")  # no absolute paths, no escapes
        except _IO_ERRORS as exc:
            raise BackupError(f"extracting {archive.name} into {target} failed: {exc}") from None
        self.moves.append((staged, target))

    def move_into_place(self) -> None:
        """Give every staged file and folder its final name."""
        for staged, target in self.moves:
            existed = target.exists()  # an empty folder or an empty file (checked before)
            if staged.is_dir() and existed:
                for child in staged.iterdir():
                    self.undo.append(partial(_remove_path, target / child.name))
                    shutil.move(child, target / child.name)
                staged.rmdir()
            else:
                self.undo.append(partial(_remove_path, target, existed))
                os.replace(staged, target)

    def take_back(self) -> None:
        """Remove everything written, newest first; report what could not be removed."""
        for action in reversed(self.undo):
            try:
                action()
            except Exception as exc:  # keep undoing the rest
                logger.error("could not remove part of the failed restore: %s", exc)


def _drop_new_objects(uri: str, before: set[str]) -> None:
    drop_postgres_objects(uri, list_postgres_objects(uri) - before)


def _remove_path(path: Path, keep_empty: bool = False) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
        if keep_empty:
            path.mkdir()
    elif path.exists() or path.is_symlink():
        path.unlink()
        if keep_empty:
            path.touch()


def _remove_empty_folder(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:
        pass  # not empty: something else was written there meanwhile


def restore_stores(backup_dir: str | Path, stores: StoreLocations) -> dict[str, Any]:
    """Restore a backup into empty stores, all or nothing.

    Every target is checked before anything is written: the backend (and auth) database
    must be empty (PostgreSQL: an existing database without tables; SQLite: no file), the
    artifact folder missing or empty. SQLite files and the artifacts are written under
    temporary names next to their targets and renamed at the end; when any step fails,
    everything written is removed, the tables a PostgreSQL restore created included.

    Args:
        backup_dir: a folder written by :func:`backup_stores`.
        stores: where to restore to.

    Returns:
        What was restored: the manifest's parts and the targets (no passwords).

    Raises:
        BackupError: a damaged backup, a non-empty or mismatched target, or a failed
            restore (then nothing of it is left).
    """
    folder = Path(backup_dir).expanduser().resolve()
    manifest = read_manifest(folder)
    _check_empty_database(manifest["backend"], stores.backend_store_uri, "backend store")
    auth = manifest.get("auth")
    if auth and auth["kind"] == "missing":
        logger.warning(
            "warning: this backup has no users database (it was not found when the backup "
            "was made); the restored server starts with the admin user only"
        )
        auth = None
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
        if target_folder.exists() and (not target_folder.is_dir() or any(target_folder.iterdir())):
            raise BackupError(f"{target_folder} is not empty; restore into a new folder")
    restore = _Restore()
    try:
        restore.database(manifest["backend"], folder, stores.backend_store_uri)
        if auth:
            restore.database(auth, folder, stores.auth_db_uri)
        if target_folder is not None:
            restore.artifacts(folder / artifacts["file"], target_folder)
        restore.move_into_place()
    except BaseException as exc:
        restore.take_back()
        if isinstance(exc, (BackupError, *_IO_ERRORS)):
            raise BackupError(
                f"the restore failed and everything it wrote was removed: {exc}; fix the cause "
                "and run the same command again"
            ) from None
        raise
    logger.info("restored %s into %s", folder, redact_uri(stores.backend_store_uri))
    return {
        "backup": str(folder),
        "created_at": manifest["created_at"],
        "backend_store_uri": redact_uri(stores.backend_store_uri),
        "artifacts_destination": str(target_folder) if target_folder else None,
        "auth_db_uri": redact_uri(stores.auth_db_uri) if auth else None,
    }

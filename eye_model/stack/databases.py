"""The databases a backup copies: PostgreSQL through its client tools, SQLite files directly.

PostgreSQL passwords are never passed on a command line: ``pg_dump``, ``pg_restore`` and
``psql`` get them through ``PGPASSWORD`` (or read ``~/.pgpass``). A restore into
PostgreSQL cannot be staged under another name (the operator created the target
database), so :func:`list_postgres_objects` and :func:`drop_postgres_objects` take back
what a restore created when a later step fails.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
from pathlib import Path
from urllib.parse import unquote, urlsplit

from eye_model.stack.config import StackError
from eye_model.uris import redact_uri, split_password

#: Seconds a database dump or restore may take.
DB_TIMEOUT = 3600
#: Schemas of the server itself, never the tracking data's.
_SYSTEM_SCHEMAS = "('pg_catalog', 'information_schema')"
#: What each kind of :func:`list_postgres_objects` is dropped with, in dropping order
#: (tables first: their triggers, indexes and owned sequences go with them).
_DROP_STATEMENTS: dict[str, str] = {
    "r": "DROP TABLE IF EXISTS {} CASCADE",
    "p": "DROP TABLE IF EXISTS {} CASCADE",
    "v": "DROP VIEW IF EXISTS {} CASCADE",
    "m": "DROP MATERIALIZED VIEW IF EXISTS {} CASCADE",
    "S": "DROP SEQUENCE IF EXISTS {} CASCADE",
    "T": "DROP TYPE IF EXISTS {} CASCADE",
    "F": "DROP ROUTINE IF EXISTS {} CASCADE",
}


class BackupError(StackError):
    """A backup or restore that cannot be done; the message names the problem and the fix."""


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


def _psql(uri: str, sql: str, what: str) -> str:
    dsn, secret = libpq_connection(uri)
    command = [_pg_tool("psql"), "--no-psqlrc", "-v", "ON_ERROR_STOP=1", "-tA", "-d", dsn]
    return _run_pg([*command, "-c", sql], secret, what)


def postgres_table_count(uri: str) -> int:
    """How many tables the database of ``uri`` holds outside the system schemas."""
    sql = (
        "SELECT count(*) FROM information_schema.tables "
        f"WHERE table_schema NOT IN {_SYSTEM_SCHEMAS}"
    )
    return int(_psql(uri, sql, f"reading {redact_uri(uri)}").strip() or 0)


def list_postgres_objects(uri: str) -> set[str]:
    """The tables, views, sequences, types and functions of a database, outside the system
    schemas and extensions.

    Returns:
        Entries ``"<kind> <schema>.<name>"`` (quoted identifiers; functions with their
        argument types), kind being a ``pg_class.relkind`` (``r`` table, ``S`` sequence,
        ...), ``T`` for a type or ``F`` for a function or procedure.
    """
    user_schema = f"n.nspname NOT IN {_SYSTEM_SCHEMAS} AND n.nspname NOT LIKE 'pg\\_%'"
    not_extension = (
        "NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = {oid} AND d.deptype = 'e')"
    )
    sql = (
        "SELECT c.relkind::text || ' ' || format('%I.%I', n.nspname, c.relname) "
        "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        f"WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S') AND {user_schema} "
        f"AND {not_extension.format(oid='c.oid')} "
        "UNION ALL SELECT 'T ' || format('%I.%I', n.nspname, t.typname) "
        "FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace "
        f"WHERE t.typtype IN ('e', 'd') AND {user_schema} "
        f"AND {not_extension.format(oid='t.oid')} "
        "UNION ALL SELECT 'F ' || format('%I.%I(%s)', n.nspname, p.proname, "
        "pg_get_function_identity_arguments(p.oid)) "
        "FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
        f"WHERE p.prokind IN ('f', 'p') AND {user_schema} "
        f"AND {not_extension.format(oid='p.oid')}"
    )
    out = _psql(uri, sql, f"reading {redact_uri(uri)}")
    return {line for line in out.splitlines() if line.strip()}


def drop_postgres_objects(uri: str, objects: set[str]) -> None:
    """Drop ``objects`` (entries of :func:`list_postgres_objects`) in one transaction."""
    order = list(_DROP_STATEMENTS)
    statements = [
        _DROP_STATEMENTS[kind].format(name)
        for kind, name in sorted(
            (entry.split(" ", 1) for entry in objects), key=lambda item: order.index(item[0])
        )
    ]
    if statements:
        _psql(
            uri,
            "BEGIN; " + "; ".join(statements) + "; COMMIT;",
            f"removing the restored tables from {redact_uri(uri)}",
        )


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
    """``pg_restore`` a custom-format dump into the (empty) database of ``uri``, in one
    transaction: a failed restore leaves the database as it was."""
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


def create_private_file(path: Path) -> None:
    """Create ``path`` empty, readable and writable by this user only (0600), whatever the
    umask; an existing file keeps its content and becomes 0600."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        os.fchmod(descriptor, 0o600)
    finally:
        os.close(descriptor)


def copy_sqlite(source: Path, target: Path) -> None:
    """A consistent copy of a SQLite database, even while a server writes to it.

    The copy is created 0600: the databases copied hold runs or password hashes.
    """
    create_private_file(target)
    src = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
    try:
        dst = sqlite3.connect(target)
        try:
            src.backup(dst)
        finally:
            dst.close()
    finally:
        src.close()

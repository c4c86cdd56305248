"""The manifest of a backup folder: what each file is, its size and SHA-256.

``manifest.json`` is written last, so a folder without it is an unfinished backup.
:func:`read_manifest` accepts only a manifest of the layout this version writes, whose
files all match their hashes; anything else is one :class:`BackupError` line naming the
problem, never a traceback.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

from eye_model.stack.databases import BackupError

#: Name of the manifest file of a backup folder.
MANIFEST = "manifest.json"
#: Version of the backup layout (``format`` in the manifest).
BACKUP_FORMAT = 1
#: The parts of a backup and the kinds each may be; ``auth`` may also be absent.
PART_KINDS: dict[str, tuple[str, ...]] = {
    "backend": ("postgresql", "sqlite"),
    "artifacts": ("folder", "object-store"),
    "auth": ("postgresql", "sqlite", "missing"),
}
#: Kinds whose data is a file of the backup folder.
FILE_KINDS = frozenset({"postgresql", "sqlite", "folder"})
_SHA256 = re.compile(r"[0-9a-f]{64}")


def sha256_of(path: Path) -> str:
    """The SHA-256 of a file, hex."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_entry(path: Path) -> dict[str, Any]:
    """The manifest's description of a file of the backup folder."""
    return {"file": path.name, "bytes": path.stat().st_size, "sha256": sha256_of(path)}


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _entry_problem(part: str, entry: object) -> str:
    """What is wrong with one part of a manifest ("" when nothing is)."""
    if not isinstance(entry, dict):
        return f"'{part}' is missing or not an object"
    kind = entry.get("kind")
    kinds = PART_KINDS[part]
    if not isinstance(kind, str) or kind not in kinds:
        return f"'{part}.kind' is {kind!r}, not one of {', '.join(kinds)}"
    if kind not in FILE_KINDS:
        return ""
    name = entry.get("file")
    if not isinstance(name, str) or name in ("", ".", "..") or Path(name).name != name:
        return f"'{part}.file' is {name!r}, not the name of a file in the backup folder"
    if not _is_int(entry.get("bytes")) or entry["bytes"] < 0:
        return f"'{part}.bytes' is {entry.get('bytes')!r}, not a size in bytes"
    if not isinstance(entry.get("sha256"), str) or not _SHA256.fullmatch(entry["sha256"]):
        return f"'{part}.sha256' is not a SHA-256 (64 hex digits)"
    if kind == "folder" and not _is_int(entry.get("files")):
        return f"'{part}.files' is {entry.get('files')!r}, not a number of files"
    return ""


def check_manifest(manifest: object, where: Path) -> dict[str, Any]:
    """Check the layout of a parsed manifest.

    Args:
        manifest: the parsed ``manifest.json``.
        where: the manifest's path, for the messages.

    Returns:
        The manifest.

    Raises:
        BackupError: an unknown format version, or a part missing or of the wrong type.
    """
    damaged = f"{where} is damaged"
    fix = "use another backup, or write a new one with eye-model backup"
    if not isinstance(manifest, dict):
        raise BackupError(f"{damaged}: it is not a JSON object; {fix}")
    version = manifest.get("format")
    if not _is_int(version):
        raise BackupError(f"{damaged}: 'format' is {version!r}, not a version number; {fix}")
    if version != BACKUP_FORMAT:
        raise BackupError(
            f"{where}: backup format {version} is not supported (this eye-model reads format "
            f"{BACKUP_FORMAT}); restore it with the eye-model version that wrote it "
            f"({manifest.get('eye_model_version', 'unknown')})"
        )
    if not isinstance(manifest.get("created_at"), str):
        raise BackupError(f"{damaged}: 'created_at' is missing or not a date; {fix}")
    for part in PART_KINDS:
        if part == "auth" and manifest.get(part) is None:
            continue
        problem = _entry_problem(part, manifest.get(part))
        if problem:
            raise BackupError(f"{damaged}: {problem}; {fix}")
    return manifest


def read_manifest(backup_dir: str | Path) -> dict[str, Any]:
    """Read and check a backup folder: a well-formed manifest whose files match their hashes.

    Args:
        backup_dir: a folder written by :func:`eye_model.stack.backup.backup_stores`.

    Returns:
        The manifest.

    Raises:
        BackupError: no manifest, a malformed one, or a missing or damaged file.
    """
    folder = Path(backup_dir).expanduser()
    path = folder / MANIFEST
    if not folder.is_dir():
        raise BackupError(f"{folder} is not a folder; give the folder `eye-model backup` wrote")
    try:
        manifest = json.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise BackupError(
            f"{folder} has no {MANIFEST}: it is not a backup, or the backup did not finish"
        ) from None
    except OSError as exc:
        raise BackupError(f"cannot read {path}: {exc.strerror}") from None
    except ValueError as exc:  # truncated or not JSON, not UTF-8
        raise BackupError(
            f"{path} is damaged (not valid JSON: {exc}); use another backup, or write a new "
            "one with eye-model backup"
        ) from None
    check_manifest(manifest, path)
    for part in PART_KINDS:
        entry = manifest.get(part) or {}
        if entry.get("kind") in FILE_KINDS:
            data = folder / entry["file"]
            if (
                not data.is_file()
                or data.stat().st_size != entry["bytes"]
                or sha256_of(data) != entry["sha256"]
            ):
                raise BackupError(
                    f"{data} is missing or damaged (its size or SHA-256 does not match the "
                    "manifest); use another backup"
                )
    return manifest

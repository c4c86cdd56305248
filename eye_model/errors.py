"""One line for any failure a user can meet: what went wrong and how to fix it.

The CLI turns every exception it does not expect into :func:`describe_error`'s line (the
traceback only with ``--debug``). MLflow's HTTP answers are told apart: 401 (who are
you), 403 (not allowed: which permission is missing), 404 (no such thing), and a
tracking server that does not answer at all.
"""

from __future__ import annotations

import re

from eye_model.uris import redact_uri

#: The permission of MLflow's basic-auth app each command needs (MLflow names them).
PERMISSION_NEEDED: dict[str, str] = {
    "train": "EDIT on the experiment (and EDIT on the registered model with register_as)",
    "register": "EDIT on the registered model",
    "promote": "EDIT on the registered model",
    "rollback": "EDIT on the registered model",
    "export-model": "READ on the registered model",
    "serve": "READ on the registered model",
    "drift": "READ on the registered model and EDIT on the experiment",
    "probe": "EDIT on the experiment",
    "batch-score": "READ on the registered model",
}

_CONNECTION_SIGNS = (
    "Max retries exceeded",
    "Connection refused",
    "Failed to establish a new connection",
    "Name or service not known",
    "Read timed out",
    "ConnectionError",
)


def first_line(text: str, limit: int = 300) -> str:
    """The first non-empty line of ``text``, at most ``limit`` characters."""
    for line in str(text).splitlines():
        if line.strip():
            return line.strip()[:limit]
    return ""


def _http_status(exc: BaseException) -> int | None:
    status = getattr(exc, "get_http_status_code", None)
    if callable(status):
        try:
            code = int(status())
        except (TypeError, ValueError):
            code = 0
        if code in (401, 403, 404):
            return code
    match = re.search(r"error code (\d{3})", str(exc))
    return int(match.group(1)) if match else None


def describe_error(exc: BaseException, *, command: str = "", tracking_uri: str = "") -> str:
    """One line naming the problem and the fix, never a traceback.

    Args:
        exc: the exception.
        command: the CLI command that failed (to name the permission it needs).
        tracking_uri: the tracking server it talked to (printed without credentials).

    Returns:
        The message (no trailing newline).
    """
    server = redact_uri(tracking_uri) if tracking_uri else "the tracking server"
    text = str(exc)
    if any(sign in text for sign in _CONNECTION_SIGNS) or isinstance(exc, ConnectionError):
        return (
            f"no tracking server answers at {server}: start one (`eye-model stack up`) "
            "or set MLFLOW_TRACKING_URI to a running server"
        )
    status = _http_status(exc)
    if status == 401:
        return (
            f"{server} did not accept the credentials (HTTP 401): set MLFLOW_TRACKING_USERNAME "
            "and MLFLOW_TRACKING_PASSWORD to a user of that server"
        )
    if status == 403:
        needed = PERMISSION_NEEDED.get(command, "a permission on this model or experiment")
        return (
            f"this user is not allowed to do that on {server} (HTTP 403): `{command or 'it'}` "
            f"needs {needed}; ask an admin to grant it, or use another user"
        )
    if status == 404:
        return (
            f"not found on {server} (HTTP 404): {first_line(text)}; check the name, version "
            "or run id, and MLFLOW_TRACKING_URI"
        )
    kind = type(exc).__name__
    detail = first_line(text) or "no message"
    return f"{kind}: {detail} (run with --debug for the traceback)"

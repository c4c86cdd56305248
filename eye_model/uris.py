"""URIs as eye-model prints, logs and stores them: never with a password in them.

The one place that redacts credentials from URIs (tracking servers, backend stores,
alert hooks, model locations) before anything is logged.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

#: Query parameters of a URI that hold secrets.
_SECRET_QUERY_KEYS = frozenset({"password", "sslpassword", "secret", "token", "access_token"})


def redact_uri(uri: str) -> str:
    """``uri`` without its password (user names stay): safe to print, log and store.

    The password of the user part and ``password=`` query parameters go:
    ``postgresql://mlflow@db:5432/mlflow`` is what is left of a PostgreSQL URI that had
    both. Anything else is returned unchanged, character for character
    (``sqlite:////abs/path`` keeps its four slashes).
    """
    parts = urlsplit(uri)
    if not parts.scheme or "://" not in uri:
        return uri
    result = uri
    if "@" in parts.netloc:
        userinfo, hostport = parts.netloc.rsplit("@", 1)
        if ":" in userinfo:
            user = userinfo.split(":", 1)[0]
            result = result.replace(parts.netloc, f"{user}@{hostport}" if user else hostport, 1)
    if parts.query:
        pairs = parse_qsl(parts.query, keep_blank_values=True)
        kept = [(k, v) for k, v in pairs if k.lower() not in _SECRET_QUERY_KEYS]
        if len(kept) != len(pairs):
            query = urlencode(kept)
            result = result.replace(f"?{parts.query}", f"?{query}" if query else "", 1)
    return result


def split_password(uri: str) -> tuple[str, str | None]:
    """Separate the password from a URI.

    Returns:
        The URI without password (as :func:`redact_uri`) and the password, percent-decoded
        (None when the URI holds none).
    """
    parts = urlsplit(uri)
    password = None
    if parts.scheme and "@" in parts.netloc:
        userinfo = parts.netloc.rsplit("@", 1)[0]
        if ":" in userinfo:
            password = unquote(userinfo.split(":", 1)[1])
    if password is None:
        for key, value in parse_qsl(parts.query):
            if key.lower() == "password":
                password = value
    return redact_uri(uri), password


def uri_scheme(uri: str) -> str:
    """The scheme of a store URI without its driver: ``postgresql+psycopg2://`` → ``postgresql``."""
    return urlsplit(uri).scheme.split("+", 1)[0].lower()

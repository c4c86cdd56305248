"""Keep Nagle's algorithm off on every connection a model server worker accepts.

With ``--workers N`` above 1, uvicorn binds the listening socket itself with ``proto`` left
at 0 (uvicorn issue 3149, open in 0.54). Accepted connections inherit it, and asyncio turns
``TCP_NODELAY`` on only for sockets that report ``IPPROTO_TCP``. Uvicorn writes a response's
headers and its body in two sends, so with Nagle on the body waits for the client's delayed
ACK: every keep-alive request after the first took about 44 ms longer (measured on the
no-op model: 2.2 ms with one worker, 44 ms with two). ``--workers 1`` is unaffected: asyncio
builds that listener from ``getaddrinfo``, which sets ``proto``.

:func:`keep_tcp_nodelay`, called in each scoring-server worker before it accepts a
connection, makes asyncio set ``TCP_NODELAY`` on any TCP stream socket.
"""

from __future__ import annotations

import asyncio.base_events
import socket
from typing import Any

_installed = False


def _set_nodelay(sock: Any) -> None:
    """asyncio's ``_set_nodelay``, for TCP stream sockets whatever their ``proto`` says."""
    if sock.family in (socket.AF_INET, socket.AF_INET6) and sock.type == socket.SOCK_STREAM:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:  # a socket closed meanwhile: asyncio would fail on it anyway
            pass


def keep_tcp_nodelay() -> None:
    """Make asyncio set ``TCP_NODELAY`` on every TCP connection of this process (idempotent)."""
    global _installed
    if _installed or not hasattr(asyncio.base_events, "_set_nodelay"):
        return
    asyncio.base_events._set_nodelay = _set_nodelay
    _installed = True

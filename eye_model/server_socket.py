"""What a worker of MLflow's uvicorn scoring server fixes or learns about its server.

:func:`scoring_server_workers` tells how many ``--workers`` share the machine (their networks
then share the cores and sleep when idle, :func:`eye_model.inference.network_threading`).
:func:`keep_tcp_nodelay` keeps Nagle's algorithm off on every connection a worker accepts:

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
import os
import socket
from collections.abc import Sequence
from pathlib import Path
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


def _command_line(pid: int) -> list[str]:
    """A process's arguments (Linux ``/proc``); empty where they cannot be read."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [arg.decode(errors="replace") for arg in raw.split(b"\0") if arg]


def _parent_pid(pid: int) -> int:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    return int(stat.rpartition(")")[2].split()[1])  # the name in (...) may hold spaces


def workers_argument(args: Sequence[str], environ: dict[str, str] | None = None) -> int | None:
    """The workers a uvicorn command line starts (``--workers N``, else ``WEB_CONCURRENCY``).

    Returns None when ``args`` is not a uvicorn command line.
    """
    if not any(Path(arg).name == "uvicorn" for arg in args[:3]):
        return None
    for index, arg in enumerate(args):
        value = None
        if arg == "--workers" and index + 1 < len(args):
            value = args[index + 1]
        elif arg.startswith("--workers="):
            value = arg.partition("=")[2]
        if value is not None and value.isdigit():
            return max(1, int(value))
    concurrency = (os.environ if environ is None else environ).get("WEB_CONCURRENCY", "")
    return max(1, int(concurrency)) if concurrency.isdigit() else 1


def scoring_server_workers(pid: int | None = None) -> int:
    """How many workers the uvicorn server of process ``pid`` (default: this one) runs.

    With one worker, uvicorn's own process serves; with more, each worker is a child of the
    uvicorn process that was given ``--workers``. 1 when neither is a uvicorn command line
    (or ``/proc`` cannot be read).
    """
    pid = os.getpid() if pid is None else pid
    for candidate in (pid, _parent_pid(pid)):
        workers = workers_argument(_command_line(candidate)) if candidate else None
        if workers is not None:
            return workers
    return 1

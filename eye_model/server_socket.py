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

:func:`balance_connections` spreads connections over the workers. They all wait on one
listening socket; the kernel wakes them all and the first to call ``accept`` wins, and
asyncio then accepts every connection waiting, up to the backlog. Clients that connect at
once therefore landed on one worker: measured with 2 workers, 2 clients shared one worker
in 6 of 8 tries (one core idle) and 8 clients split 6/2 in 5 of 8. Keep-alive keeps them
there. With it, a worker accepts one connection per wake-up and, while it holds ``k`` open
connections, waits ``k`` x 5 ms (at most 20 ms) before it does, so the least busy worker
takes the connection.
"""

from __future__ import annotations

import asyncio.base_events
import os
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Any

_installed = False
#: Wait before a worker accepts, per open connection it holds, and at most (seconds).
ACCEPT_WAIT_PER_CONNECTION = 0.005
ACCEPT_WAIT_MAX = 0.02


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


def balance_connections() -> bool:
    """Make this process's asyncio servers leave new connections to less busy workers.

    Called in each worker of a scoring server with more than one worker, before it accepts
    a connection (idempotent). Returns whether it is in place: it relies on asyncio's
    selector event loop, and does nothing where that is not the loop's.
    """
    from asyncio import selector_events

    loop_class: Any = selector_events.BaseSelectorEventLoop
    accept = getattr(loop_class, "_accept_connection", None)
    if accept is None or not hasattr(loop_class, "_add_reader"):
        return False
    if getattr(accept, "balanced", False):
        return True

    def accept_balanced(
        loop: Any,
        protocol_factory: Any,
        sock: socket.socket,
        sslcontext: Any = None,
        server: Any = None,
        backlog: int = 100,
        *args: Any,
    ) -> None:
        def accept_one() -> None:
            accept(loop, protocol_factory, sock, sslcontext, server, 1, *args)

        held = int(getattr(server, "_active_count", 0) or 0)
        if not held:
            accept_one()  # an idle worker takes the connection at once
            return
        fd = sock.fileno()
        loop._remove_reader(fd)  # others may take it meanwhile

        def later() -> None:
            if sock.fileno() != fd or (server is not None and not server.is_serving()):
                return  # the server closed meanwhile
            # Listening again first: if accepting fails for want of file descriptors,
            # asyncio takes the reader away and puts it back after a second.
            loop._add_reader(
                fd,
                accept_balanced,
                loop,
                protocol_factory,
                sock,
                sslcontext,
                server,
                backlog,
                *args,
            )
            accept_one()  # nothing left to accept: returns at once

        loop.call_later(min(held * ACCEPT_WAIT_PER_CONNECTION, ACCEPT_WAIT_MAX), later)

    accept_balanced.balanced = True  # type: ignore[attr-defined]
    loop_class._accept_connection = accept_balanced
    return True


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

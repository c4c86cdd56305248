"""Closing every telemetry session when the process ends, set up once per process.

Each live session registers here (:func:`register`). One ``atexit`` hook, registered the
first time, closes them all at a normal exit. SIGTERM needs more: uvicorn shuts down
gracefully on SIGTERM, then restores the handler it found and raises the signal again; with
the default handler the process would die there without running ``atexit``. The process's
owner (for MLflow's scoring server: the pyfunc's ``load_context``) therefore calls
:func:`install_shutdown_handler` once, which closes every session first, then does what the
previous handler did. Library code never installs a signal handler by itself.
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import threading
import time
from types import FrameType
from typing import Protocol

logger = logging.getLogger(__name__)


class Closable(Protocol):
    """A session that delivers what it holds when closed."""

    def close(self, timeout: float = ...) -> None:
        """Deliver what is pending and end the session."""


# Reentrant: the SIGTERM handler runs in the main thread, which may hold it already.
_lock = threading.RLock()
_live: list[Closable] = []
_atexit_registered = False
_sigterm_installed = False


def register(session: Closable) -> None:
    """Close ``session`` when the process ends (at exit, or on SIGTERM once installed)."""
    global _atexit_registered
    with _lock:
        _live.append(session)
        if not _atexit_registered:
            atexit.register(close_all)
            _atexit_registered = True


def unregister(session: Closable) -> None:
    """Forget ``session`` (it was closed)."""
    with _lock:
        if session in _live:
            _live.remove(session)


#: Seconds :func:`close_all` takes at most: SIGTERM must stop a server within 10 s.
CLOSE_ALL_SECONDS = 6.0


def close_all(timeout: float = CLOSE_ALL_SECONDS) -> None:
    """Close every registered session once, the oldest first, in at most ``timeout`` s."""
    deadline = time.monotonic() + timeout
    with _lock:
        sessions = list(_live)
        _live.clear()
    for session in sessions:
        try:
            session.close(max(0.5, deadline - time.monotonic()))
        except Exception:  # one session's failure must not keep the others' records
            logger.exception("telemetry could not close a session")


def install_shutdown_handler() -> bool:
    """On SIGTERM, close every telemetry session, then chain to the previous handler.

    Idempotent: the handler is installed once per process. Call it from the code that owns
    the process (signal handlers can only be set from the main thread).

    Returns:
        Whether the handler is installed (False when called outside the main thread).
    """
    global _sigterm_installed
    with _lock:
        if _sigterm_installed:
            return True
        if threading.current_thread() is not threading.main_thread():
            return False
        previous = signal.getsignal(signal.SIGTERM)

        def on_sigterm(signum: int, frame: FrameType | None) -> None:
            close_all()
            if callable(previous):
                previous(signum, frame)
            else:
                signal.signal(signum, signal.SIG_DFL)
                os.kill(os.getpid(), signum)

        signal.signal(signal.SIGTERM, on_sigterm)
        _sigterm_installed = True
        return True

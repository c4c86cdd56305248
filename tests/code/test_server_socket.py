"""A model server worker keeps Nagle off, leaves connections to less busy workers, and knows
how many workers share its cores.

``uvicorn --workers N`` (N > 1) binds its listener through ``Config.bind_socket``, whose
socket reports ``proto`` 0; asyncio then leaves ``TCP_NODELAY`` off on every accepted
connection (uvicorn issue 3149) and each keep-alive response waits ~40 ms for a delayed ACK.
These tests use uvicorn's own ``bind_socket`` and real loopback connections.
"""

from __future__ import annotations

import asyncio
import collections
import http.client
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import uvicorn

from eye_model.server_socket import keep_tcp_nodelay, scoring_server_workers, workers_argument
from eye_model.stack import find_free_port, start_process, stop_process


def _accepted_nodelay() -> int:
    """TCP_NODELAY of a connection accepted on a listener bound as ``uvicorn --workers 2``."""
    config = uvicorn.Config(app=None, host="127.0.0.1", port=find_free_port(), workers=2)
    listener = config.bind_socket()
    seen: list[int] = []

    class Probe(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            sock = transport.get_extra_info("socket")
            seen.append(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            transport.close()

    async def accept_one() -> None:
        server = await asyncio.get_running_loop().create_server(Probe, sock=listener)
        host, port = listener.getsockname()[:2]
        _, writer = await asyncio.open_connection(host, port)
        for _ in range(200):
            if seen:
                break
            await asyncio.sleep(0.01)
        writer.close()
        server.close()
        await server.wait_closed()

    try:
        asyncio.run(accept_one())
    finally:
        listener.close()
    assert seen, "no connection was accepted"
    return seen[0]


def test_uvicorns_bound_listener_leaves_nagle_on_without_the_fix() -> None:
    # The bug this module works around; if uvicorn fixes it, this test says so.
    import asyncio.base_events as base_events

    original = base_events.__dict__["_set_nodelay"]
    if getattr(original, "__module__", "") == "eye_model.server_socket":
        pytest.skip("the fix is already installed in this process")
    assert _accepted_nodelay() == 0


def test_keep_tcp_nodelay_turns_nagle_off_on_accepted_connections(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import asyncio.base_events as base_events

    # Undo the patch after the test: other tests in this process see asyncio as shipped.
    monkeypatch.setattr(base_events, "_set_nodelay", base_events._set_nodelay)
    monkeypatch.setattr("eye_model.server_socket._installed", False)
    keep_tcp_nodelay()
    keep_tcp_nodelay()  # idempotent
    assert _accepted_nodelay() == 1


@pytest.mark.parametrize(
    ("args", "environ", "expected"),
    [
        # MLflow's command: `uvicorn --host H --port P --workers N ... app` (run by python).
        (["/venv/bin/python", "/venv/bin/uvicorn", "--workers", "2", "app:app"], {}, 2),
        (["/venv/bin/uvicorn", "--host", "127.0.0.1", "--workers=3", "app:app"], {}, 3),
        (["uvicorn", "app:app"], {}, 1),
        (["uvicorn", "app:app"], {"WEB_CONCURRENCY": "4"}, 4),  # uvicorn's own default
        (["uvicorn", "--workers", "0", "app:app"], {}, 1),
        (["python", "-c", "from multiprocessing.spawn import spawn_main"], {}, None),
        ([], {}, None),
    ],
)
def test_workers_argument_reads_a_uvicorn_command_line(
    args: list[str], environ: dict[str, str], expected: int | None
) -> None:
    assert workers_argument(args, environ) == expected


def test_a_process_outside_a_model_server_counts_as_one_worker() -> None:
    assert scoring_server_workers() == 1  # pytest, started by make or CI: no uvicorn around


#: An app for real ``uvicorn --workers 2``: it answers with the pid of the worker that holds
#: the connection, and balances connections as a scoring-server worker does.
BALANCED_APP = """
import os
from eye_model.server_socket import balance_connections
assert balance_connections()

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": str(os.getpid()).encode()})
"""


def _pids_of_connections(port: int, count: int, stagger: float = 0.0) -> list[int]:
    """Open ``count`` keep-alive connections at once (or ``stagger`` s apart): their pids."""
    start = threading.Barrier(count)
    connections = [http.client.HTTPConnection("127.0.0.1", port, timeout=30) for _ in range(count)]
    pids = [0] * count

    def ask(k: int) -> None:
        start.wait()
        time.sleep(stagger * k)
        connections[k].request("GET", "/")
        pids[k] = int(connections[k].getresponse().read())

    threads = [threading.Thread(target=ask, args=(k,)) for k in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # Each connection stays with its worker: ask again on the same connections.
    for k, connection in enumerate(connections):
        connection.request("GET", "/")
        assert int(connection.getresponse().read()) == pids[k]
        connection.close()
    return pids


def test_clients_that_connect_at_once_are_spread_over_the_workers(tmp_path: Path) -> None:
    """Without it, asyncio's accept loop let one worker take every waiting connection:
    2 clients shared one of 2 workers in 6 of 8 tries, leaving a core idle."""
    (tmp_path / "balanced.py").write_text(BALANCED_APP)
    port = find_free_port()
    command = [
        *[sys.executable, "-m", "uvicorn", "--app-dir", str(tmp_path)],
        *["--port", str(port), "--workers", "2", "--log-level", "warning", "balanced:app"],
    ]
    server = start_process(command, log_path=tmp_path / "uvicorn.log")
    try:
        workers: set[int] = set()
        deadline = time.monotonic() + 60
        while len(workers) < 2:  # both workers up: each has answered once
            assert time.monotonic() < deadline, (tmp_path / "uvicorn.log").read_text()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as answer:
                    workers.add(int(answer.read()))
            except OSError:
                time.sleep(0.2)
        for count, stagger in [(2, 0.0)] * 6 + [(4, 0.0), (8, 0.0)] * 2 + [(4, 0.1)]:
            shares = collections.Counter(_pids_of_connections(port, count, stagger))
            assert set(shares) <= workers
            assert sorted(shares.values()) == [count // 2] * 2, (count, stagger, shares)
    finally:
        stop_process(server, grace=10)
    leftovers = subprocess.run(["pgrep", "-f", "balanced:app"], capture_output=True, check=False)
    assert leftovers.stdout == b""

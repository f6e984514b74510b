"""The HTTP server under each service holds up under ordinary load: a listen backlog that a burst of new
connections does not overflow, keep-alive connections kept for every steady client, and clients that
send half a request and stall do not take every worker."""

from __future__ import annotations

import http.client
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest

from mockservers.server.wsgi import KEEP_ALIVE_CONNECTIONS, LISTEN_BACKLOG
from mockservers.testing import RunningSandbox, start_sandbox


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningSandbox]:
    running = start_sandbox(tmp_path_factory.mktemp("sandbox"), mode="live", tls=True)
    try:
        yield running
    finally:
        running.stop()


def address(sb: RunningSandbox, service: str) -> tuple[str, int]:
    parts = urlsplit(sb.info[service]["url"])
    assert parts.hostname is not None and parts.port is not None
    return parts.hostname, parts.port


def test_each_service_listens_with_a_deep_backlog(live: RunningSandbox) -> None:
    for service in ("identity", "dataverse", "bc"):
        host, port = address(live, service)
        listing = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True, check=True)
        backlogs = [int(line.split()[2]) for line in listing.stdout.splitlines() if line.startswith("LISTEN")]
        assert backlogs and min(backlogs) >= min(LISTEN_BACKLOG, 4096) > 5, listing.stdout  # cheroot's default is 5


def test_steady_clients_keep_their_connections(live: RunningSandbox) -> None:
    """Twenty clients, three requests each on one connection: none is told to reconnect (cheroot's
    default keeps 10 idle connections and closes the rest after each answer)."""
    host, port = address(live, "dataverse")
    context = ssl.create_default_context(cafile=live.ca_bundle)
    token = live.token()
    clients = [http.client.HTTPSConnection(host, port, context=context, timeout=10) for _ in range(20)]
    assert len(clients) <= KEEP_ALIVE_CONNECTIONS
    closed = []
    try:
        for _ in range(3):
            for client in clients:
                client.request("GET", "/api/data/v9.2/WhoAmI()", headers={"Authorization": f"Bearer {token}"})
                response = client.getresponse()
                response.read()
                assert response.status == 200
                closed.append(response.getheader("Connection", "").lower() == "close" or response.will_close)
        sockets = [client.sock for client in clients]
    finally:
        for client in clients:
            client.close()
    assert not any(closed)
    assert all(sock is not None for sock in sockets)


def test_stalled_half_requests_do_not_take_every_worker(live: RunningSandbox) -> None:
    """24 clients (as many as a server had workers before) send half a request line and stall; a normal
    client is still answered at once. (Each stalled client still holds a worker until the read times
    out: a few dozen more would hold them all.)"""
    host, port = address(live, "bc")
    context = ssl.create_default_context(cafile=live.ca_bundle)
    stalled = []
    try:
        for _ in range(24):
            raw = socket.create_connection((host, port), timeout=10)
            sock = context.wrap_socket(raw, server_hostname=host)
            sock.sendall(b"GET /v2.0/companies HT")  # and nothing more
            stalled.append(sock)
        time.sleep(0.5)  # let the server hand them to workers
        started = time.monotonic()
        resp = live.bc_session().get(f"{live.bc_api}/companies", timeout=20)
        elapsed = time.monotonic() - started
    finally:
        for sock in stalled:
            sock.close()
    assert resp.status_code == 200
    assert elapsed < 3, f"a normal request waited {elapsed:.1f} s behind stalled clients"

"""A client that trickles its request headers is dropped (`HeaderTimeoutProtocol`); one that sends
them promptly, on a fresh or a kept-alive connection, is served as before. A real uvicorn."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest
import uvicorn

from ml_platform.serving.server import HeaderTimeoutProtocol

TIMEOUT = 1.0


class FastTimeout(HeaderTimeoutProtocol):
    header_timeout = TIMEOUT


async def _app(scope, receive, send) -> None:
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        free = sock.getsockname()[1]
    config = uvicorn.Config(
        _app, host="127.0.0.1", port=free, http=FastTimeout, log_level="warning", lifespan="off"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield free
    server.should_exit = True
    thread.join(10)


def _closed_by_server(sock: socket.socket) -> bool:
    try:
        return sock.recv(1024) == b""
    except ConnectionResetError:
        return True


def test_trickled_headers_are_cut_at_the_deadline(port: int):
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
        started = time.monotonic()
        sock.settimeout(0.2)
        closed = False
        for i in range(int(TIMEOUT * 10)):  # one header byte every 0.2 s, never finishing
            try:
                sock.sendall(b"X-a: %d\r\n" % i)
                closed = _closed_by_server(sock)
            except TimeoutError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                closed = True
            if closed:
                break
        assert closed, "the connection was still open"
        assert TIMEOUT * 0.9 <= time.monotonic() - started <= TIMEOUT + 1.5


def test_prompt_requests_on_a_kept_alive_connection_are_served(port: int):
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.settimeout(5)
        for _ in range(3):  # spread over more than the header deadline in total
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert sock.recv(1024).startswith(b"HTTP/1.1 200")
            time.sleep(TIMEOUT * 0.6)

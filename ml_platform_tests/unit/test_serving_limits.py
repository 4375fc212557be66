"""The serving app's limits, driven in process through raw ASGI calls (no sockets, no models):
body size, request ids, clients that go away."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterable
from pathlib import Path

import pytest

from ml_platform.serving.app import create_app
from ml_platform.serving.requests import RequestParser, request_id

CHUNK = 64 * 1024


@pytest.fixture
def app(tmp_path: Path, spec):
    return create_app(
        tmp_path,
        [spec],
        "http://127.0.0.1:9",  # never called: the lifespan (registry polling) is not run
        f"sqlite:///{tmp_path / 'online.sqlite'}",
    )


class Call:
    """One ASGI HTTP request whose body comes from `chunks`; counts the chunks the app pulled."""

    def __init__(self, chunks: Iterable[bytes], disconnect_after: int | None = None) -> None:
        self.chunks = iter(chunks)
        self.next = next(self.chunks, None)
        self.pulled = 0
        self.disconnect_after = disconnect_after
        self.messages: list[dict] = []

    async def receive(self) -> dict:
        if self.disconnect_after is not None and self.pulled >= self.disconnect_after:
            return {"type": "http.disconnect"}
        chunk, self.next = self.next, next(self.chunks, None)
        if chunk is None:
            return {"type": "http.disconnect"}
        self.pulled += 1
        return {"type": "http.request", "body": chunk, "more_body": self.next is not None}

    async def send(self, message: dict) -> None:
        self.messages.append(message)

    def run(self, app, path: str, headers: dict[str, str]) -> None:
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "root_path": "",
            "query_string": b"",
            "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
            "client": ("127.0.0.1", 50000),
            "server": ("127.0.0.1", 8000),
        }
        asyncio.run(app(scope, self.receive, self.send))

    @property
    def status(self) -> int:
        return next(m["status"] for m in self.messages if m["type"] == "http.response.start")

    @property
    def headers(self) -> dict[str, str]:
        start = next(m for m in self.messages if m["type"] == "http.response.start")
        return {k.decode(): v.decode() for k, v in start["headers"]}

    def json(self) -> dict:
        return json.loads(
            b"".join(m.get("body", b"") for m in self.messages if m["type"] == "http.response.body")
        )


def endless(chunk: bytes = b"x" * CHUNK):
    while True:
        yield chunk


def test_a_declared_length_over_the_limit_is_refused_before_any_byte_is_read(app, spec) -> None:
    limit = RequestParser(spec).max_bytes
    call = Call(endless())
    call.run(app, "/v1/sales_forecast/predict", {"content-length": str(300 * 1024 * 1024)})
    assert call.status == 413
    assert call.json()["error"] == "too_large"
    assert str(limit) in call.json()["detail"]
    assert call.pulled == 0


def test_a_chunked_body_over_the_limit_stops_at_limit_plus_one_chunk(app, spec) -> None:
    limit = RequestParser(spec).max_bytes
    call = Call(endless())  # no Content-Length: a chunked 1 GB+ upload
    call.run(app, "/v1/sales_forecast/predict", {"transfer-encoding": "chunked"})
    assert call.status == 413
    assert call.json()["error"] == "too_large"
    assert call.pulled * CHUNK <= limit + CHUNK
    assert call.pulled == limit // CHUNK + 1


def test_a_body_within_the_limit_is_still_parsed(app) -> None:
    body = b'{"entities": [{"store_id": 5, "product_id": "P01"}]}'
    call = Call([body[:10], body[10:]])
    call.run(app, "/v1/sales_forecast/predict", {"content-length": str(len(body))})
    assert call.status == 422
    assert call.json()["error"] == "invalid_request"


def test_a_non_numeric_content_length_is_a_400(app) -> None:
    call = Call([b"{}"])
    call.run(app, "/v1/sales_forecast/predict", {"content-length": "12abc"})
    assert call.status == 400
    assert call.json()["error"] == "bad_content_length"


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        ("req-42.a:b_C", True),
        ("x" * 128, True),
        ("x" * 129, False),
        ("x" * 1_000_000, False),
        ("", False),
        ("a b", False),
        ("id\u00e9", False),
        ("a/../b", False),
    ],
)
def test_only_short_plain_request_ids_are_kept(given: str, kept: bool) -> None:
    got = request_id(given)
    if kept:
        assert got == given
    else:
        assert got != given
        assert len(got) == 32 and all(c in "0123456789abcdef" for c in got)


def test_a_huge_request_id_header_is_replaced_in_the_response(app) -> None:
    call = Call([b"{}"])
    call.run(app, "/v1/sales_forecast/predict", {"x-request-id": "y" * 100_000})
    assert call.status == 422
    assert len(call.headers["x-request-id"]) == 32
    call = Call([b"{}"])
    call.run(app, "/v1/sales_forecast/predict", {"x-request-id": "mine-1"})
    assert call.headers["x-request-id"] == "mine-1"


def test_a_client_that_disconnects_mid_body_is_one_plain_log_line(
    app, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    call = Call(endless(b'{"entities": ['), disconnect_after=2)
    call.run(app, "/v1/sales_forecast/predict", {"content-length": "1000"})
    assert call.pulled == 2
    problems = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert problems == []
    lines = [r for r in caplog.records if "disconnected" in r.getMessage()]
    assert len(lines) == 1 and lines[0].levelno == logging.INFO

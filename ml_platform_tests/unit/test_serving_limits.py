"""The serving app's limits, driven in process through raw ASGI calls (no sockets, no models):
body size, request ids, clients that go away, readiness."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterable
from pathlib import Path

import pytest

from ml_platform.resources.feature_store import SqliteFeatureStore, StoreUnavailableError
from ml_platform.serving import deployment
from ml_platform.serving.app import create_app
from ml_platform.serving.deployment import LoadedModel, ModelSlots, Snapshot
from ml_platform.serving.requests import RequestParser, request_id

CHUNK = 64 * 1024


def make_app(root: Path, spec, store: Path):
    return create_app(
        root,
        [spec],
        "http://127.0.0.1:9",  # never called: the lifespan (registry polling) is not run
        f"sqlite:///{store}",
    )


@pytest.fixture
def app(tmp_path: Path, spec):
    return make_app(tmp_path, spec, tmp_path / "online.sqlite")


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

    def run(self, app, path: str, headers: dict[str, str], method: str = "POST") -> None:
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": method,
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


class FakeRegistry:
    """Just enough of MlflowClient for `ModelSlots.refresh`."""

    def __init__(self) -> None:
        self.aliases: dict[str, str] = {}

    def get_registered_model(self, name: str):
        return type("Registered", (), {"aliases": dict(self.aliases), "tags": {}})()


def test_readyz_clears_the_load_error_once_the_champion_is_back_on_a_good_version(
    spec, monkeypatch: pytest.MonkeyPatch
) -> None:
    def load_version(client, name, version, trusted):
        if version == "2":
            raise ValueError("v2 is corrupt")
        return object()

    monkeypatch.setattr(deployment, "load_version", load_version)
    registry = FakeRegistry()
    slots = ModelSlots(spec, registry)
    registry.aliases = {"champion": "1"}
    assert slots.refresh() and slots.last_error is None
    registry.aliases = {"champion": "2"}
    assert not slots.refresh()  # v2 fails to load: v1 keeps serving
    assert slots.snapshot.champion.version == 1
    assert "v2 is corrupt" in slots.last_error
    registry.aliases = {"champion": "1"}  # moved back: v1 is still loaded, nothing to reload
    slots.refresh()
    assert slots.snapshot.champion.version == 1
    assert slots.last_error is None
    registry.aliases = {"champion": "1", "canary": "2"}
    slots.refresh()
    assert "(canary)" in slots.last_error and slots.snapshot.canary is None


def readyz(app) -> tuple[int, dict]:
    call = Call([b""])
    call.run(app, "/readyz", {}, method="GET")
    return call.status, call.json()


def with_champion(app):
    for served in app.state.served.values():
        served.slots.snapshot = Snapshot(champion=LoadedModel(version=1, model=object()))
    return app


def test_readyz_is_503_when_the_online_store_cannot_be_read(tmp_path: Path, spec) -> None:
    good = tmp_path / "good.sqlite"
    SqliteFeatureStore(good).close()  # a writer creates the table
    status, body = readyz(with_champion(make_app(tmp_path / "a", spec, good)))
    assert status == 200 and body["online_store"] == {"ok": True}

    corrupt = tmp_path / "corrupt.sqlite"
    corrupt.write_bytes(b"this is not a database" * 1000)
    status, body = readyz(with_champion(make_app(tmp_path / "b", spec, corrupt)))
    assert status == 503 and body["ready"] is False
    assert body["online_store"]["ok"] is False
    assert "cannot be read" in body["online_store"]["error"]

    status, body = readyz(with_champion(make_app(tmp_path / "c", spec, tmp_path / "none.sqlite")))
    assert status == 503 and "does not exist yet" in body["online_store"]["error"]


def test_a_corrupt_store_is_unavailable_not_an_internal_error(tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.sqlite"
    corrupt.write_bytes(b"\x00garbage" * 1000)
    store = SqliteFeatureStore(corrupt, read_only=True)
    try:
        with pytest.raises(StoreUnavailableError, match="cannot be read"):
            store.get("sales_forecast", ["S0001|P01"])
    finally:
        store.close()


def test_a_body_that_trickles_in_is_cut_with_408(tmp_path: Path, spec) -> None:
    app = create_app(
        tmp_path,
        [spec],
        "http://127.0.0.1:9",
        f"sqlite:///{tmp_path / 'online.sqlite'}",
        body_timeout_seconds=0.3,
    )

    class Trickle(Call):
        async def receive(self) -> dict:
            await asyncio.sleep(0.05)  # one byte every 50 ms, forever
            return await super().receive()

    call = Trickle(endless(b"{"))
    call.run(app, "/v1/sales_forecast/predict", {"content-length": "1000"})
    assert call.status == 408
    assert call.json()["error"] == "request_timeout"
    assert 3 <= call.pulled <= 8


def test_serve_passes_uvicorn_real_options_with_a_keep_alive_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import inspect

    import uvicorn

    from ml_platform.serving import server

    seen: dict = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: seen.update(kwargs))
    for name in ("ML_PLATFORM_ROOT", "PROMETHEUS_MULTIPROC_DIR", "OMP_NUM_THREADS"):
        monkeypatch.setenv(name, "")  # restored after the test: serve() sets them
    for name in ("ML_PLATFORM_SERVE_RELOAD_SECONDS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.setenv(name, "")
    server.serve(tmp_path, port=18123, workers=1)
    assert seen["timeout_keep_alive"] == server.KEEP_ALIVE_SECONDS <= 5
    assert set(seen) <= set(inspect.signature(uvicorn.Config).parameters)

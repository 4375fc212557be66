"""The alert webhook posts only to http(s) URLs and never follows a redirect."""

from __future__ import annotations

import threading
import urllib.error
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from ml_platform.automation.alerts import Alert, post_webhook
from ml_platform.core.json_lines import iso_time


def _alert() -> Alert:
    return Alert(iso_time(0), "sales_forecast", "sales_forecast/raw", "r1", "job", "reason")


class _Redirecting(BaseHTTPRequestHandler):
    seen: list[tuple[str, str]] = []

    def _answer(self) -> None:
        _Redirecting.seen.append((self.command, self.path))
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        if self.path == "/hook":
            self.send_response(302)
            self.send_header("Location", "/elsewhere")
        else:
            self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_POST = _answer
    do_GET = _answer

    def log_message(self, *args) -> None:
        pass


def test_a_redirect_is_refused_not_followed_as_a_get() -> None:
    server = HTTPServer(("127.0.0.1", 0), _Redirecting)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        _Redirecting.seen.clear()
        with pytest.raises(urllib.error.HTTPError) as caught:
            post_webhook(f"http://127.0.0.1:{server.server_port}/hook", _alert(), timeout=5)
        assert caught.value.code == 302
        assert _Redirecting.seen == [("POST", "/hook")]  # nothing sent to /elsewhere
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.mark.parametrize(
    "url",
    ["file:///etc/passwd", "ftp://127.0.0.1/x", "data:,hello", "/just/a/path", "http:///nohost"],
)
def test_only_http_urls_are_posted_to(url: str) -> None:
    with pytest.raises(ValueError, match="http"):
        post_webhook(url, _alert(), timeout=1)

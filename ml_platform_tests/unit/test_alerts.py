"""Alert format, sink and webhook: plain functions, no Dagster."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from multiprocessing import get_context
from pathlib import Path

import pytest

from ml_platform.automation.alerts import (
    MAX_REASON_CHARS,
    Alert,
    StepFailure,
    alerts_path,
    append_alert,
    error_text,
    pipeline_of,
    post_webhook,
    run_failure_alert,
    skipped_file_alert,
)
from ml_platform.core.json_lines import iso_time, read_json_lines

CONTRACT = "2024-05-08: missing required columns ['units_sold'] (found ['date', 'units'])"
FIELDS = ["time", "pipeline", "asset", "run_id", "job", "reason"]


def _alert(run_id: str | None = "run-1", reason: str = "boom") -> Alert:
    return Alert(iso_time(0), "sales_forecast", "sales_forecast/raw", run_id, "job", reason)


def test_run_failure_alert_carries_the_step_message_that_names_the_rule():
    alert = run_failure_alert(
        job_name="sales_forecast_ingest",
        run_id="abc",
        step_failures=[
            StepFailure("validated", CONTRACT, ("sales_forecast/validated", "x/quarantine"))
        ],
        run_failure_message='Execution of run for "sales_forecast_ingest" failed.',
        timestamp=1_700_000_000,
    )
    line = json.loads(alert.to_json())
    assert list(line) == FIELDS
    assert line == {
        "time": "2023-11-14T22:13:20+00:00",
        "pipeline": "sales_forecast",
        "asset": "sales_forecast/validated",
        "run_id": "abc",
        "job": "sales_forecast_ingest",
        "reason": f"validated: {CONTRACT}",
    }


def test_run_failure_without_step_failures_falls_back_to_the_run_message():
    alert = run_failure_alert(
        job_name="sales_forecast_training",
        run_id="r",
        step_failures=[],
        run_failure_message="run worker crashed",
        timestamp=0,
    )
    assert (alert.pipeline, alert.asset, alert.reason) == (
        "sales_forecast",
        None,
        "run worker crashed",
    )


@pytest.mark.parametrize(
    ("job", "assets", "expected"),
    [
        ("sales_forecast_ingest", [], "sales_forecast"),
        ("returns_training", [], "returns"),
        ("__ASSET_JOB", ["churn/validated"], "churn"),
        ("_ingest", [], "_ingest"),
        (None, [], "unknown"),
    ],
)
def test_pipeline_of_prefers_asset_prefix_then_job_suffix(job, assets, expected):
    assert pipeline_of(job, assets) == expected


def test_long_reasons_are_truncated_to_keep_one_short_line():
    alert = run_failure_alert(
        job_name="j",
        run_id="r",
        step_failures=[StepFailure("s", "x" * 10_000)],
        run_failure_message=None,
        timestamp=0,
    )
    assert len(alert.reason) <= MAX_REASON_CHARS
    assert alert.reason.endswith("(truncated)")


@pytest.mark.parametrize(
    ("message", "cls", "expected"),
    [
        ("builtins.ValueError: bad\n", "ValueError", "ValueError: bad"),
        ("ValueError: bad", "ValueError", "ValueError: bad"),
        ("pkg.mod.Oops: a: b", "Oops", "Oops: a: b"),
        ("something else: x", "KeyError", "something else: x"),
    ],
)
def test_error_text_drops_the_module_path(message, cls, expected):
    assert error_text(message, cls) == expected


def test_skipped_file_alert_names_the_file_and_the_problem():
    alert = skipped_file_alert(
        pipeline="p",
        file_name="notes.txt",
        problem="name is not YYYY-MM-DD.csv",
        sensor="p_landing_sensor",
        timestamp=0,
    )
    assert alert.run_id is None and alert.asset == "p/raw"
    assert alert.reason == "landing file 'notes.txt' skipped: name is not YYYY-MM-DD.csv"


def test_append_writes_one_line_per_run_and_dedupes_on_run_id(tmp_path: Path):
    sink = alerts_path(tmp_path)
    assert append_alert(sink, _alert("a"))
    assert append_alert(sink, _alert("b"))
    assert not append_alert(sink, _alert("a", reason="delivered again after a crash"))
    assert append_alert(sink, _alert(None))  # no run: never deduped
    assert append_alert(sink, _alert(None))
    lines = read_json_lines(sink)
    assert [line["run_id"] for line in lines] == ["a", "b", None, None]
    assert sink.read_bytes().endswith(b"\n")


def test_dedupe_tolerates_a_torn_or_foreign_line(tmp_path: Path):
    sink = alerts_path(tmp_path)
    sink.parent.mkdir(parents=True)
    sink.write_text('{"run_id": "a"\nnot json\n[1, 2]\n')  # a torn first line, and junk
    assert append_alert(sink, _alert("a"))  # the torn line named no run that can be parsed
    assert append_alert(sink, _alert("c"))
    assert not append_alert(sink, _alert("c"))


def _append_many(args: tuple[str, int]) -> None:
    sink, worker = args
    for i in range(50):
        append_alert(Path(sink), _alert(f"w{worker}-{i}", reason="r" * 500))


def test_concurrent_appenders_never_interleave_or_duplicate(tmp_path: Path):
    sink = alerts_path(tmp_path)
    with get_context("fork").Pool(4) as pool:
        pool.map(_append_many, [(str(sink), w) for w in range(4)] * 2)  # each worker twice
    lines = read_json_lines(sink)  # every line parses: no interleaving
    assert sorted(line["run_id"] for line in lines) == sorted(
        f"w{w}-{i}" for w in range(4) for i in range(50)
    )


class _Recorder(BaseHTTPRequestHandler):
    received: list[dict] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        _Recorder.received.append(
            {"content_type": self.headers["Content-Type"], "body": json.loads(body)}
        )
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


def test_webhook_receives_the_same_json_as_the_file():
    server = HTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        _Recorder.received.clear()
        alert = _alert("w")
        assert post_webhook(f"http://127.0.0.1:{server.server_port}/hook", alert) == 204
        assert _Recorder.received == [
            {"content_type": "application/json", "body": json.loads(alert.to_json())}
        ]
    finally:
        server.shutdown()
        server.server_close()


def test_unreachable_webhook_raises_for_the_caller_to_log():
    with pytest.raises(OSError):
        post_webhook("http://127.0.0.1:9/nothing-listens-here", _alert(), timeout=2)

"""Structured alerts: one JSON line per event in `.ml_platform/alerts.jsonl`, optionally a webhook.

Plain Python with no dagster import, so the format, the sink and the dedupe rule are unit-tested
on their own. The sensors (`failure_sensor.py`, `landing_sensor.py`) gather the facts from Dagster
and call these functions.
"""

from __future__ import annotations

import json
import logging
import os
import urllib.parse
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from ml_platform.core.json_lines import append_json_line, iso_time
from ml_platform.core.secrets import redact
from ml_platform.layout import StateLayout
from ml_platform.names import JOB_SUFFIXES
from ml_platform.settings import ALERT_WEBHOOK_ENV, alert_webhook_url

MAX_REASON_CHARS = 4000  # one line stays readable and one write() stays small
DEDUPE_TAIL_BYTES = 1 << 20  # a repeated alert can only concern a recent run
WEBHOOK_TIMEOUT_SECONDS = 5.0


@dataclass(frozen=True)
class StepFailure:
    """What one failed step said, and which assets it was computing."""

    step_key: str
    message: str
    asset_keys: tuple[str, ...] = ()


@dataclass(frozen=True)
class Alert:
    """One alert line. Field names are the contract with whoever reads the sink."""

    time: str
    pipeline: str
    asset: str | None
    run_id: str | None
    job: str | None
    reason: str

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False)


def alerts_path(root: Path) -> Path:
    return StateLayout(root).alerts


def pipeline_of(job_name: str | None, asset_keys: Iterable[str] = ()) -> str:
    """The pipeline a run belongs to: its assets' prefix, else the job name without suffix.

    Asset keys win because ad-hoc UI materialisations run in `__ASSET_JOB`, whose name says nothing.
    """
    for key in asset_keys:
        return key.split("/", 1)[0]
    name = job_name or "unknown"
    for suffix in JOB_SUFFIXES:
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


def error_text(message: str, cls_name: str | None = None) -> str:
    """An exception's message without its module path: `ValueError: x`, not `builtins.…`."""
    text = message.strip()
    if cls_name:
        prefix, sep, rest = text.partition(": ")
        if sep and prefix.rsplit(".", 1)[-1] == cls_name:
            return f"{cls_name}: {rest}"
    return text


def truncate(text: str, limit: int = MAX_REASON_CHARS) -> str:
    """One alert reason: credentials masked (`core/secrets.py`), at most `limit` characters."""
    text = redact(text).strip()
    return text if len(text) <= limit else text[: limit - 15].rstrip() + " … (truncated)"


def run_failure_alert(
    *,
    job_name: str | None,
    run_id: str,
    step_failures: Sequence[StepFailure],
    run_failure_message: str | None,
    timestamp: float,
) -> Alert:
    """The alert for a failed run: the reason is what the failing steps said.

    A contract violation's step message already names the broken rule (for example "missing
    required columns ['units_sold']"), so it is passed on verbatim; the run-level message
    ("Execution of run for … failed") is only a fallback for runs that failed outside a step.
    """
    assets = [key for failure in step_failures for key in failure.asset_keys]
    if step_failures:
        reason = "\n".join(
            f"{failure.step_key}: {failure.message.strip()}" for failure in step_failures
        )
    else:
        reason = run_failure_message or "run failed without a step failure message"
    return Alert(
        time=iso_time(timestamp),
        pipeline=pipeline_of(job_name, assets),
        asset=assets[0] if assets else None,
        run_id=run_id,
        job=job_name,
        reason=truncate(reason),
    )


def skipped_file_alert(
    *, pipeline: str, file_name: str, problem: str, sensor: str, timestamp: float
) -> Alert:
    """The alert for a landing file the sensor will not ingest (no run exists for it)."""
    return Alert(
        time=iso_time(timestamp),
        pipeline=pipeline,
        asset=f"{pipeline}/raw",
        run_id=None,
        job=sensor,
        reason=truncate(f"landing file {file_name!r} skipped: {problem}"),
    )


def append_alert(path: Path, alert: Alert) -> bool:
    """Append one line unless an alert for the same run is already there; True if written.

    The dedupe check runs under the sink's lock (`append_json_line`), which makes a re-delivered
    run-failure event (the sensor daemon was killed after writing but before saving its cursor) a
    no-op.
    """

    def already_there() -> bool:
        return alert.run_id is not None and alert.run_id in _recent_run_ids(path)

    return append_json_line(path, alert.to_json(), skip_if=already_there)


def _recent_run_ids(path: Path) -> set[str]:
    with path.open("rb") as handle:
        handle.seek(0, os.SEEK_END)
        size = handle.tell()
        handle.seek(max(0, size - DEDUPE_TAIL_BYTES))
        tail = handle.read()
    run_ids = set()
    for raw in tail.splitlines():
        try:
            run_id = json.loads(raw).get("run_id")
        except (ValueError, AttributeError):
            continue  # the first line of the tail may be cut in half
        if run_id:
            run_ids.add(run_id)
    return run_ids


def post_webhook(url: str, alert: Alert, timeout: float = WEBHOOK_TIMEOUT_SECONDS) -> int:
    """POST the alert as JSON and return the HTTP status; network errors propagate to the caller.

    The caller logs them: an unreachable webhook must not hide the alert already in the file.
    """
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise ValueError(f"the alert webhook must be an http(s) URL, not {parts.scheme or url!r}")
    request = urllib.request.Request(
        url,
        data=alert.to_json().encode(),
        headers={"Content-Type": "application/json", "User-Agent": "ml-platform-alerts"},
        method="POST",
    )
    with _NO_REDIRECTS.open(request, timeout=timeout) as response:
        return int(response.status)


class _RefuseRedirects(urllib.request.HTTPRedirectHandler):
    """A 3xx is an HTTPError: following it could turn the POST into a GET, or leave the host."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


_NO_REDIRECTS = urllib.request.build_opener(_RefuseRedirects)


def deliver_alert(alert: Alert, root: Path, log: logging.Logger) -> bool:
    """File first, webhook second; a webhook failure is logged and never fails the tick."""
    written = append_alert(alerts_path(root), alert)
    if not written:
        log.info(f"alert for run {alert.run_id} already recorded; not sent again")
        return False
    url = alert_webhook_url()
    if url:
        try:
            post_webhook(url, alert)
        except Exception as exc:  # any network or HTTP error: the alert is already on disk
            log.warning(f"alert webhook {ALERT_WEBHOOK_ENV} failed: {type(exc).__name__}: {exc}")
    return True

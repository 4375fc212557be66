"""The landing sensor: new or changed landing files become ingest runs, each content exactly once.

Exactly-once rests on three things, each of which survives a SIGKILL of the daemon:

- Run keys are pure functions of what a request is about: the landing files' (name, content md5,
  revision). Dagster never launches a second run with a run key the same sensor has already used.
- The cursor records what has been requested (md5 per file name). Dagster 1.13 stores a tick's
  run requests and cursor before it launches any run and resumes an interrupted tick, and a tick
  killed while evaluating launched nothing, so re-evaluating it from the old cursor asks for the
  same runs with the same keys.
- Before requesting a file, the sensor asks the instance whether `raw` has already been
  materialised from exactly that content (the md5 in its metadata). Files ingested by hand or by
  `ml-platform demo`, or a cursor reset in the UI, therefore never cause a second ingest.

The scan, the cursor, the ranges and the run keys are pure functions, so the tests pin them down.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path

import dagster as dg

from ml_platform.automation.alerts import deliver_alert, skipped_file_alert
from ml_platform.core.contracts import LandingFileError, open_landing_file
from ml_platform.names import (
    LANDING_COUNT_TAG,
    LANDING_MD5_TAG,
    PIPELINE_TAG,
    RANGE_END,
    RANGE_START,
    TRIGGER_TAG,
    ingest_job_name,
    landing_sensor_name,
)
from ml_platform.resources.keys import asset_key, daily_partitions
from ml_platform.resources.platform import PlatformPaths
from ml_platform.specs import PipelineSpec

# A backfill drop becomes one run per contiguous run of days; this bounds the runs per tick. The
# remainder waits for the next tick (its files stay out of the cursor).
MAX_RANGES_PER_TICK = 4
# The only landing file name: ASCII digits (`date.fromisoformat` also takes 2026-W10-1 and
# 20260302, and `\d` alone takes other scripts' digits).
LANDING_NAME = re.compile(r"(\d{4})-(\d{2})-(\d{2})\.csv", re.ASCII)


def raw_key(spec: PipelineSpec) -> dg.AssetKey:
    return asset_key(spec, "raw")


@dataclass(frozen=True)
class LandingFile:
    name: str
    day: str  # the partition key
    md5: str


@dataclass
class LandingScan:
    files: dict[str, LandingFile] = field(default_factory=dict)  # valid, partition exists
    invalid: dict[str, tuple[str, str]] = field(default_factory=dict)  # name → (md5, problem)
    not_yet: list[str] = field(default_factory=list)  # valid date, partition not open yet


def scan_landing(directory: Path, first_day: date, last_day: date | None) -> LandingScan:
    """Classify every visible file: a partition's landing file, a bad name, or a day to come.

    Names starting with '.' are the generator's temp files (written, then renamed) and are not
    looked at, nor are sub-folders. Symbolic links, FIFOs and other non-regular files are bad
    files: they are reported, never followed or read. Days after `last_day` wait: Dagster opens a
    daily partition once the day is over.
    """
    scan = LandingScan()
    if not directory.is_dir():
        return scan
    for path in sorted(directory.iterdir()):
        if path.name.startswith("."):
            continue
        try:
            if stat.S_ISDIR(path.lstat().st_mode):
                continue
            md5 = _landing_md5(path, directory)
        except FileNotFoundError:
            continue  # renamed or deleted between listing and reading
        except LandingFileError as exc:
            if not os.path.lexists(path):
                continue
            scan.invalid[path.name] = (hashlib.md5(str(exc).encode()).hexdigest(), str(exc))
            continue
        problem, day = _parse_landing_name(path.name, first_day)
        if problem:
            scan.invalid[path.name] = (md5, problem)
        elif last_day is None or day > last_day:
            scan.not_yet.append(path.name)
        else:
            scan.files[path.name] = LandingFile(path.name, day.isoformat(), md5)
    return scan


def _landing_md5(path: Path, directory: Path) -> str:
    """md5 of a regular file inside `directory`, streamed; a link or a FIFO is refused unread."""
    digest = hashlib.md5()
    with open_landing_file(path, directory) as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _parse_landing_name(name: str, first_day: date) -> tuple[str | None, date]:
    match = LANDING_NAME.fullmatch(name)
    if match is None:
        return "name is not YYYY-MM-DD.csv", first_day
    try:
        day = date(*(int(part) for part in match.groups()))
    except ValueError as exc:
        return f"{name[:-4]!r} is not a YYYY-MM-DD date ({exc})", first_day
    if day < first_day:
        return f"{day} is before the pipeline's start_date {first_day}", first_day
    return None, day


@dataclass
class LandingCursor:
    """What the sensor has asked for: content md5 per file name, and how often content changed.

    The revision makes a run key new when a file returns to earlier content (A → B → A), which
    Dagster would otherwise skip as an already used key. Entries are never pruned: the cursor
    grows by one short entry per landing file name (about 50 bytes), which is fine for years of
    daily files.
    """

    processed: dict[str, str] = field(default_factory=dict)
    revisions: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, cursor: str | None) -> LandingCursor:
        if not cursor:
            return cls()
        data = json.loads(cursor)
        return cls(
            processed=dict(data.get("processed", {})),
            revisions={k: int(v) for k, v in data.get("revisions", {}).items()},
            skipped=dict(data.get("skipped", {})),
        )

    def to_json(self) -> str:
        data = {"processed": self.processed, "revisions": self.revisions, "skipped": self.skipped}
        return json.dumps(data, sort_keys=True, separators=(",", ":"))


def contiguous_ranges(files: Sequence[LandingFile]) -> list[list[LandingFile]]:
    """Group files into runs of consecutive days: each group is one single-run backfill."""
    groups: list[list[LandingFile]] = []
    for file in sorted(files, key=lambda f: f.day):
        day = date.fromisoformat(file.day)
        if groups and date.fromisoformat(groups[-1][-1].day) + timedelta(days=1) == day:
            groups[-1].append(file)
        else:
            groups.append([file])
    return groups


def landing_run_key(group: Sequence[LandingFile], revisions: Mapping[str, int]) -> str:
    """`landing:<first>..<last>:<digest>` where the digest covers every (name, md5, revision)."""
    parts = []
    for file in sorted(group, key=lambda f: f.name):
        revision = revisions.get(file.name, 0)
        parts.append(f"{file.name}:{file.md5}" + (f":r{revision}" if revision else ""))
    digest = hashlib.sha256("\n".join(parts).encode()).hexdigest()[:20]
    first, last = group[0].day, group[-1].day
    span = first if first == last else f"{first}..{last}"
    return f"landing:{span}:{digest}"


def landing_run_request(
    spec: PipelineSpec, group: Sequence[LandingFile], run_key: str
) -> dg.RunRequest:
    tags = {TRIGGER_TAG: "landing", PIPELINE_TAG: spec.name, LANDING_COUNT_TAG: str(len(group))}
    if len(group) == 1:
        tags[LANDING_MD5_TAG] = group[0].md5
        return dg.RunRequest(run_key=run_key, partition_key=group[0].day, tags=tags)
    tags.update({RANGE_START: group[0].day, RANGE_END: group[-1].day})
    return dg.RunRequest(run_key=run_key, tags=tags)


def ingested_md5(instance: dg.DagsterInstance, key: dg.AssetKey, days: Sequence[str]) -> dict:
    """The `md5` metadata of the latest `raw` materialisation of each of these partitions."""
    if not days:
        return {}
    storage = instance.event_log_storage
    latest = storage.get_latest_storage_id_by_partition(
        key, dg.DagsterEventType.ASSET_MATERIALIZATION, partitions=set(days)
    )
    if not latest:
        return {}
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=key, storage_ids=list(latest.values())), limit=len(latest)
    ).records
    found = {}
    for record in records:
        materialization = record.asset_materialization
        md5 = materialization.metadata.get("md5") if materialization else None
        if materialization is not None and md5 is not None:
            found[materialization.partition] = md5.value
    return found


def evaluate_landing(
    context: dg.SensorEvaluationContext, spec: PipelineSpec, root: Path
) -> dg.SensorResult:
    """One tick: alert on bad names once, skip what is done, request the rest as ranges."""
    cursor = LandingCursor.parse(context.cursor)
    last_key = daily_partitions(spec).get_last_partition_key()
    last_day = date.fromisoformat(last_key) if last_key else None
    scan = scan_landing(root / spec.landing.directory, spec.landing.start_date, last_day)

    for name, (md5, problem) in scan.invalid.items():
        if cursor.skipped.get(name) != md5:
            context.log.warning(f"{spec.name}: landing file {name!r} skipped: {problem}")
            alert = skipped_file_alert(
                pipeline=spec.name,
                file_name=name,
                problem=problem,
                sensor=landing_sensor_name(spec),
                timestamp=time.time(),
            )
            deliver_alert(alert, root, context.log)
            cursor.skipped[name] = md5
    if scan.not_yet:
        context.log.info(
            f"{len(scan.not_yet)} landing file(s) wait for their day's partition to open "
            f"(last open: {last_key}): {', '.join(scan.not_yet[:5])}"
        )

    pending = [f for f in scan.files.values() if cursor.processed.get(f.name) != f.md5]
    done = ingested_md5(context.instance, raw_key(spec), [f.day for f in pending])
    for file in [f for f in pending if done.get(f.day) == f.md5]:
        cursor.processed[file.name] = file.md5  # already ingested (by hand or a lost cursor)
    pending = [f for f in pending if done.get(f.day) != f.md5]

    groups = contiguous_ranges(pending)
    requests = []
    for group in groups[:MAX_RANGES_PER_TICK]:
        for file in group:
            if file.name in cursor.processed:  # content changed since it was requested
                cursor.revisions[file.name] = cursor.revisions.get(file.name, 0) + 1
        requests.append(landing_run_request(spec, group, landing_run_key(group, cursor.revisions)))
        cursor.processed.update({f.name: f.md5 for f in group})
    if len(groups) > MAX_RANGES_PER_TICK:
        later = sum(len(g) for g in groups[MAX_RANGES_PER_TICK:])
        context.log.info(f"{later} more file(s) in later ranges are left for the next tick")
    if requests:
        summary = ", ".join(r.run_key for r in requests)
        context.log.info(f"requesting {len(requests)} ingest run(s): {summary}")
    return dg.SensorResult(
        run_requests=requests,
        cursor=cursor.to_json(),
        skip_reason=None if requests else "no new or changed landing files",
    )


def build_landing_sensor(spec: PipelineSpec) -> dg.SensorDefinition:
    @dg.sensor(
        name=landing_sensor_name(spec),
        job_name=ingest_job_name(spec),
        minimum_interval_seconds=spec.automation.landing_sensor_interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=(
            f"Ingest new or changed files in `{spec.landing.directory}`, once per content: "
            "run keys come from the files' md5s; a backfill drop becomes one range run."
        ),
    )
    def landing_sensor(
        context: dg.SensorEvaluationContext, paths: PlatformPaths
    ) -> dg.SensorResult:
        return evaluate_landing(context, spec, paths.root_path)

    return landing_sensor

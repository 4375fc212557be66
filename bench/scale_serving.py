"""Filling the online store with millions of entities for `bench/serving.py --entities N`.

The rows go through `OnlineStore.write_latest`, the call the `features` asset makes, and the
baseline is a bare bulk insert of the same encoded rows into the same kind of store (same engine,
same settings, same disk), timed on the insert calls alone: the encoding is not charged to it.
"""

from __future__ import annotations

import sqlite3
import time
import uuid
from contextlib import closing
from pathlib import Path

import numpy as np
import pandas as pd

MB = 1024**2
BODY_SAMPLE = 100_000  # entities the large-store load cycles over, spread over the store


def synthetic_features(spec, rows: list[dict], count: int, day: str) -> pd.DataFrame:
    """`count` entities' feature rows for `day`: the real rows first, then copies of them under
    new entity ids (`B0000000|P00`, ...), so every synthetic entity has a real row's features."""
    base = pd.DataFrame(rows)
    extra = max(count - len(base), 0)
    index = np.arange(extra)
    copies = base.iloc[index % len(base)].reset_index(drop=True)
    first, *others = spec.entity_keys
    copies[first] = [f"B{i // 100:07d}" for i in index.tolist()]
    if others:
        copies[others[0]] = [f"P{i % 100:02d}" for i in index.tolist()]
    frame = pd.concat([base.iloc[:count], copies], ignore_index=True)
    frame[spec.timestamp] = pd.Timestamp(day)
    return frame


def synthetic_rows(spec, rows: list[dict], count: int, sample: int, seed: int = 0) -> list[dict]:
    """A uniform sample of the synthetic entities' rows (keys + features) for request bodies."""
    rng = np.random.default_rng(seed)
    extra = max(count - len(rows), 0)
    picked = rng.choice(extra, size=min(sample, extra), replace=False) if extra else []
    first, *others = spec.entity_keys
    out = []
    for i in sorted(int(x) for x in picked):
        row = dict(rows[i % len(rows)])
        row[first] = f"B{i // 100:07d}"
        if others:
            row[others[0]] = f"P{i % 100:02d}"
        out.append(row)
    return out


def fill(spec, url: str, frame: pd.DataFrame) -> float:
    """Seconds for `OnlineStore(url).write_latest(spec, frame)`: the `features` asset's path."""
    from ml_platform.resources.online_store import OnlineStore

    started = time.perf_counter()
    written = OnlineStore(url=url).write_latest(spec, frame)
    seconds = time.perf_counter() - started
    if written != len(frame):
        raise RuntimeError(f"wrote {written} of {len(frame)} entities")
    return seconds


def bare_inserts(
    spec, frame: pd.DataFrame, path: Path, redis_url: str | None, redis_key: str
) -> dict[str, float]:
    """Seconds of bare bulk inserts of the same encoded rows, in the same chunks, timed on the
    insert calls alone (encoding once for both stores is not charged to them):

    - SQLite: plain `INSERT`s into an empty table of the same schema, in a file with the same
      settings (WAL, one transaction per chunk);
    - Redis: `HSET key entity row` for each slice the store's upsert script gets.
    """
    from ml_platform.resources.feature_store import REDIS_CHUNK, iter_latest_rows

    client = None
    if redis_url:
        import redis

        client = redis.Redis.from_url(redis_url)
    seconds = {"sqlite": 0.0, "redis": 0.0}
    try:
        with closing(sqlite3.connect(path, timeout=30)) as conn:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(
                "CREATE TABLE features (pipeline TEXT NOT NULL, entity TEXT NOT NULL,"
                " feature_day TEXT NOT NULL, row TEXT NOT NULL, PRIMARY KEY (pipeline, entity))"
            )
            for chunk in iter_latest_rows(spec, frame):
                started = time.perf_counter()
                with conn:
                    conn.executemany(
                        "INSERT INTO features VALUES (?, ?, ?, ?)",
                        ((spec.name, *row) for row in chunk),
                    )
                seconds["sqlite"] += time.perf_counter() - started
                if client is None:
                    continue
                slices = [chunk[i : i + REDIS_CHUNK] for i in range(0, len(chunk), REDIS_CHUNK)]
                mappings = [{e: row for e, _day, row in part} for part in slices]
                started = time.perf_counter()
                for mapping in mappings:
                    client.hset(redis_key, mapping=mapping)
                seconds["redis"] += time.perf_counter() - started
    finally:
        if client is not None:
            client.close()
    return seconds


def sqlite_size(path: Path) -> int:
    """Bytes on disk: the database and its WAL (checkpointed first, so the WAL is small)."""
    with closing(sqlite3.connect(path, timeout=30)) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))


def redis_used_memory(url: str) -> int:
    import redis

    client = redis.Redis.from_url(url)
    try:
        return int(client.info("memory")["used_memory"])
    finally:
        client.close()


def redis_namespace() -> str:
    return f"bench_serving_{uuid.uuid4().hex[:12]}"


def redis_delete(url: str, pattern: str) -> int:
    """Delete every key under the bench's own prefix (UNLINK: freed in the background)."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=pattern, count=1000))
        return client.unlink(*keys) if keys else 0
    finally:
        client.close()


def start_private_redis(work: Path) -> tuple[str, object]:
    """A redis-server of our own on a free 127.0.0.1 port, no persistence: stopped afterwards."""
    import shutil
    import socket
    import subprocess

    if shutil.which("redis-server") is None:
        raise RuntimeError("redis-server is not installed: pass --redis-url or --no-redis")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen(
        ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", "",
         "--appendonly", "no", "--dir", str(work)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"redis://127.0.0.1:{port}/0"
    for _ in range(100):
        try:
            redis_used_memory(url)
            return url, proc
        except Exception:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("the private redis-server did not start")


def prepare_scale(args, spec, rows: list[dict], work: Path, make_server) -> tuple[dict, list]:
    """Fill a 1,000-entity and an N-entity store, time the refresh against a bare insert, and
    return the servers to load: ours on the small store, ours on the large one (as "ours")
    and, with Redis, ours on the large Redis store."""
    count, ts = args.entities, spec.timestamp
    day1, day2 = "2030-01-01", "2030-01-02"  # the refresh is newer, so every row is replaced
    out: dict = {"entities": count, "small_entities": 1000}
    small = work / "online_small.sqlite"
    fill(spec, f"sqlite:///{small}", synthetic_features(spec, rows, 1000, day1))
    started = time.perf_counter()
    frame = synthetic_features(spec, rows, count, day1)
    out["build_frame_s"] = time.perf_counter() - started
    print(f"{count:,} entities' feature rows built in {out['build_frame_s']:.1f}s", flush=True)

    large, bare = work / "online_large.sqlite", work / "bare.sqlite"
    cleanups, redis_url, namespace = [], None, redis_namespace()
    if not args.no_redis:
        if args.redis_url:
            redis_url, proc = args.redis_url, None
        else:
            redis_url, proc = start_private_redis(work)
            cleanups.append(proc.terminate)
        cleanups.insert(0, lambda: redis_delete(redis_url, f"{namespace}:*"))
        out["redis_private"] = proc is not None
        before = redis_used_memory(redis_url)
    bare_seconds = bare_inserts(spec, frame, bare, redis_url, f"{namespace}:bare")
    out["sqlite_bare_s"] = bare_seconds["sqlite"]
    out["sqlite_bare_bytes"] = sqlite_size(bare)
    for path in bare.parent.glob(bare.name + "*"):
        path.unlink()
    out["sqlite_fill_s"] = fill(spec, f"sqlite:///{large}", frame)
    frame[ts] = pd.Timestamp(day2)
    out["sqlite_refresh_s"] = fill(spec, f"sqlite:///{large}", frame)
    out["sqlite_bytes"] = sqlite_size(large)
    print(
        "sqlite: bare insert {sqlite_bare_s:.1f}s, first fill {sqlite_fill_s:.1f}s, refresh "
        "{sqlite_refresh_s:.1f}s, {mb:,.0f} MB on disk".format(mb=out["sqlite_bytes"] / MB, **out),
        flush=True,
    )
    servers = [
        make_server("ours-1k", f"sqlite:///{small}", synthetic_rows(spec, rows, 1000, 1000)),
        make_server("ours", f"sqlite:///{large}", synthetic_rows(spec, rows, count, BODY_SAMPLE)),
    ]
    if redis_url:
        out["redis_bare_s"] = bare_seconds["redis"]
        out["redis_bare_bytes"] = redis_used_memory(redis_url) - before
        redis_delete(redis_url, f"{namespace}:bare")
        time.sleep(2)  # UNLINK frees in the background
        before = redis_used_memory(redis_url)
        store = f"{redis_url}?namespace={namespace}"
        frame[ts] = pd.Timestamp(day1)
        out["redis_fill_s"] = fill(spec, store, frame)
        frame[ts] = pd.Timestamp(day2)
        out["redis_refresh_s"] = fill(spec, store, frame)
        out["redis_bytes"] = redis_used_memory(redis_url) - before
        print(
            "redis: bare insert {redis_bare_s:.1f}s, first fill {redis_fill_s:.1f}s, refresh "
            "{redis_refresh_s:.1f}s, {mb:,.0f} MB in memory".format(
                mb=out["redis_bytes"] / MB, **out
            ),
            flush=True,
        )
        servers.append(
            make_server("ours-redis", store, synthetic_rows(spec, rows, count, BODY_SAMPLE))
        )
    del frame

    def cleanup() -> None:
        for step in cleanups:
            step()

    out["cleanup"] = cleanup
    return out, servers


def scale_targets(scale: dict, results: dict, max_growth: float, min_share: float) -> list:
    """p99 growth from 1,000 entities, and the refresh rate against the bare insert."""
    small, large = results["ours-1k"]["runs"][8], results["ours"]["runs"][8]
    growth = large["p99_ms"] / small["p99_ms"]
    n = f"{scale['entities']:,}"
    targets = [
        (
            f"p99 at 8 conns, {n} / 1,000 entities: {large['p99_ms']:.2f} / "
            f"{small['p99_ms']:.2f} ms = {growth:.2f} (<= {max_growth})",
            growth <= max_growth,
        )
    ]
    for store in ("sqlite", "redis"):
        if f"{store}_refresh_s" not in scale:
            continue
        share = scale[f"{store}_bare_s"] / scale[f"{store}_refresh_s"]
        rate = scale["entities"] / scale[f"{store}_refresh_s"]
        targets.append(
            (
                f"{store} refresh {rate:,.0f} rows/s = {share:.2f} of bare insert (>= {min_share})",
                share >= min_share,
            )
        )
    return targets


def print_scale(scale: dict) -> None:
    """Write rates and store sizes, each store's bare insert beside our write path."""
    n = scale["entities"]
    print(f"\nonline store with {n:,} entities (rows/s; MB)")
    for store in ("sqlite", "redis"):
        if f"{store}_refresh_s" not in scale:
            continue
        rates = [n / scale[f"{store}_{k}_s"] for k in ("bare", "fill", "refresh")]
        size = scale[f"{store}_bytes"] / MB
        bare_size = scale[f"{store}_bare_bytes"] / MB
        where = "on disk" if store == "sqlite" else "in memory (used_memory)"
        print(
            f"  {store:<7} bare insert {rates[0]:>10,.0f}   write_latest first fill "
            f"{rates[1]:>10,.0f}   full refresh {rates[2]:>10,.0f}   {size:,.0f} MB {where} "
            f"(bare table {bare_size:,.0f} MB)"
        )

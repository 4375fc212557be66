"""Dagster's run-sharded SQLite event log with its engines kept open (embedded default only).

Dagster's `SqliteEventLogStorage` builds a new SQLAlchemy engine and a new connection for every
write, and an asset event writes twice (run shard + index shard). At ~1,200 events for a 120-day
backfill that bookkeeping was most of the run. This subclass keeps one engine per shard (a few
recent run shards and the index), so a write is an insert on an open connection.

It also writes event batches in one transaction per shard. Dagster hands a storage the events
of a range run in batches (the planned events of every partition when the run is created, and a
step's per-partition materializations) once `DAGSTER_EVENT_BATCH_SIZE` is set; the SQLite base
class then still stores them one by one. This storage turns that setting on for its own process
(an operator's value wins) and writes each batch with the same rows, in the same order, as
`store_event` would. Postgres needs none of this.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from itertools import groupby
from typing import Any

from dagster._core.events import ASSET_EVENTS
from dagster._core.events.log import EventLogEntry
from dagster._core.storage.event_log.schema import SqlEventLogStorageTable
from dagster._core.storage.event_log.sqlite.sqlite_event_log import (
    SQLITE_BUSY_TIMEOUT_SECONDS,
    SqliteEventLogStorage,
)
from dagster._core.storage.sqlalchemy_compat import db_result
from sqlalchemy import create_engine
from sqlalchemy.engine import Connection, Engine

MAX_OPEN_SHARDS = 8  # the index plus recent runs; older engines are disposed
EVENT_BATCH_SIZE_ENV = "DAGSTER_EVENT_BATCH_SIZE"  # read by Dagster's instance at every event
EVENT_BATCH_SIZE = "1000"


class PooledSqliteEventLogStorage(SqliteEventLogStorage):
    """`SqliteEventLogStorage` that reuses engines (and their pooled connections) per shard."""

    def __init__(self, base_dir: str, inst_data: Any = None) -> None:
        self._engines: OrderedDict[str, Engine] = OrderedDict()  # before: init may connect
        super().__init__(_under_dagster_home(base_dir), inst_data)
        os.environ.setdefault(EVENT_BATCH_SIZE_ENV, EVENT_BATCH_SIZE)

    @classmethod
    def from_config_value(cls, inst_data: Any, config_value: Any) -> PooledSqliteEventLogStorage:
        return cls(inst_data=inst_data, **config_value)

    def _engine(self, shard: str) -> Engine:
        engine = self._engines.get(shard)
        if engine is None:
            engine = create_engine(
                self.conn_string_for_shard(shard),
                connect_args={"timeout": SQLITE_BUSY_TIMEOUT_SECONDS},
            )
            if shard not in self._initialized_dbs:
                self._initdb(engine)
                self._initialized_dbs.add(shard)
            self._engines[shard] = engine
            while len(self._engines) > MAX_OPEN_SHARDS:
                _, oldest = self._engines.popitem(last=False)
                oldest.dispose()
        else:
            self._engines.move_to_end(shard)
        return engine

    @contextmanager
    def _connect(self, shard: str) -> Iterator[Connection]:
        with self._db_lock, self._engine(shard).connect() as conn, conn.begin():
            yield conn

    def store_event_batch(self, events: Sequence[EventLogEntry]) -> None:
        """What `store_event` writes for each event, with one transaction per shard per run of
        consecutive asset events instead of two transactions per event.

        Events other than a run's asset events are stored one by one, in their place in the order.
        """
        for (is_asset, _run_id), run in groupby(events, key=lambda e: (_is_asset(e), e.run_id)):
            if is_asset:
                self._store_asset_events(list(run))
            else:
                for event in run:
                    self.store_event(event)

    def _store_asset_events(self, events: list[EventLogEntry]) -> None:
        rows = [self._event_to_row(event) for event in events]  # serialises each event once
        with self.run_connection(events[0].run_id) as conn:
            conn.execute(SqlEventLogStorageTable.insert(), rows)
        with self.index_transaction() as conn:
            event_ids = []
            for row in rows:
                with db_result(conn, SqlEventLogStorageTable.insert().values(**row)) as result:
                    event_ids.append(result.inserted_primary_key[0])
            self._store_asset_event_tags(conn, events, event_ids)
            for index in _last_of_each_kind_per_asset(events):
                self._store_asset_event(conn, events[index], event_ids[index])

    def wipe(self) -> None:
        self._dispose_engines()
        super().wipe()

    def dispose(self) -> None:
        self._dispose_engines()
        super().dispose()

    def _dispose_engines(self) -> None:
        while self._engines:
            _, engine = self._engines.popitem()
            engine.dispose()


def _under_dagster_home(base_dir: str) -> str:
    """A relative `base_dir` (what `instance.ensure_dagster_home` writes) lives in DAGSTER_HOME,
    so a moved or copied instance folder writes its own events, never the old folder's."""
    if os.path.isabs(base_dir):
        return base_dir
    from ml_platform.settings import dagster_home_from_env

    home = dagster_home_from_env()
    if home is None:
        raise ValueError(f"event log base_dir {base_dir!r} is relative but DAGSTER_HOME is unset")
    return os.path.join(os.path.abspath(home), base_dir)


def _is_asset(event: EventLogEntry) -> bool:
    dagster_event = event.dagster_event
    return (
        dagster_event is not None
        and dagster_event.event_type in ASSET_EVENTS
        and dagster_event.asset_key is not None
    )


def _last_of_each_kind_per_asset(events: Sequence[EventLogEntry]) -> list[int]:
    """Indexes of the events whose `asset_keys` row update survives, in their original order.

    Each event type sets a fixed set of columns of its asset's row (a materialization its
    last_materialization, run id and timestamp; a planned event its run id and timestamp; ...),
    so applying the last event of each type per asset, in order, leaves the row exactly as
    applying every event would.
    """
    last: dict[tuple[str, str], int] = {}
    for index, event in enumerate(events):
        dagster_event = event.get_dagster_event()
        last[(str(dagster_event.asset_key), dagster_event.event_type_value)] = index
    return sorted(last.values())

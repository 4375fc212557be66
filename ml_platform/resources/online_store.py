"""The online feature store as a Dagster resource: SQLite by default, Redis in production.

The backends live in `ml_platform.resources.feature_store` (no dagster) so the serving app reads
exactly what the `features` asset writes.
"""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg
import pandas as pd

from ml_platform.core.secrets import errors_redacted
from ml_platform.resources.feature_store import entity_id, iter_latest_rows, open_feature_store
from ml_platform.specs import PipelineSpec

__all__ = ["OnlineStore", "online_store_url_source"]


def online_store_url_source(root: Path) -> str | dg.EnvVar:
    """The store URL as resource config: `dg.EnvVar` when set in the environment, so a Redis
    password is read when the run starts and never stored in run snapshots (`runs.db`)."""
    from ml_platform.settings import ONLINE_STORE_URL_ENV, online_store_url

    if os.environ.get(ONLINE_STORE_URL_ENV):
        return dg.EnvVar(ONLINE_STORE_URL_ENV)
    return online_store_url(root)


class OnlineStore(dg.ConfigurableResource):
    """Latest feature row per entity, written by `features` and read by `ml-platform serve`."""

    url: str

    def write_latest(self, spec: PipelineSpec, features: pd.DataFrame) -> int:
        """Upsert each entity's newest row; returns how many entities were offered.

        Encoded and written a chunk at a time (one transaction each), so a refresh of millions
        of entities holds one chunk of encoded rows, never all of them.
        """
        if features.empty:
            return 0
        written = 0
        with errors_redacted():
            store = open_feature_store(self.url)
            try:
                for chunk in iter_latest_rows(spec, features):
                    store.upsert(spec.name, chunk)
                    written += len(chunk)
            finally:
                store.close()
        return written

    def read(self, spec: PipelineSpec, entities: list[dict]) -> dict[str, dict | None]:
        """Feature rows for the given entity key dicts; unknown entities map to None."""
        import json

        ids = [entity_id(spec, e) for e in entities]
        with errors_redacted():
            store = open_feature_store(self.url)
            try:
                values = store.get(spec.name, ids)
            finally:
                store.close()
        return {i: None if v is None else json.loads(v) for i, v in zip(ids, values, strict=True)}

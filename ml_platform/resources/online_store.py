"""The online feature store as a Dagster resource: SQLite by default, Redis in production.

The backends live in `ml_platform.resources.feature_store` (no dagster) so the serving app reads
exactly what the `features` asset writes.
"""

from __future__ import annotations

import dagster as dg
import pandas as pd

from ml_platform.resources.feature_store import entity_id, latest_rows, open_feature_store
from ml_platform.specs import PipelineSpec

__all__ = ["OnlineStore"]


class OnlineStore(dg.ConfigurableResource):
    """Latest feature row per entity, written by `features` and read by `ml-platform serve`."""

    url: str

    def write_latest(self, spec: PipelineSpec, features: pd.DataFrame) -> int:
        """Upsert each entity's newest row; returns how many entities were offered."""
        rows = latest_rows(spec, features)
        if rows:
            store = open_feature_store(self.url)
            try:
                store.upsert(spec.name, rows)
            finally:
                store.close()
        return len(rows)

    def read(self, spec: PipelineSpec, entities: list[dict]) -> dict[str, dict | None]:
        """Feature rows for the given entity key dicts; unknown entities map to None."""
        import json

        ids = [entity_id(spec, e) for e in entities]
        store = open_feature_store(self.url)
        try:
            values = store.get(spec.name, ids)
        finally:
            store.close()
        return {i: None if v is None else json.loads(v) for i, v in zip(ids, values, strict=True)}

"""Sticky canary routing: an entity's key hash decides its variant, so it always sees one model."""

from __future__ import annotations

import hashlib

BUCKETS = 10_000


def bucket(entity: str) -> int:
    """A stable bucket in [0, BUCKETS) for an entity id (same on every worker and host)."""
    digest = hashlib.blake2b(entity.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % BUCKETS


def is_canary(entity: str, weight_percent: float) -> bool:
    """True for about `weight_percent` % of entities; growing the weight keeps earlier ones."""
    return bucket(entity) < weight_percent * (BUCKETS // 100)

"""Canary routing: which requests the canary answers, so its share matches the weight.

Like Flagger and Argo Rollouts, the weight is a share of *requests*, with entity affinity as an
option (`deployment.canary.affinity` in the spec):

- `request`: a counter per process sends exactly `weight` % of requests to the canary (request n
  goes to the canary when floor(n * w / 100) grows), whatever the number of entities. An entity
  may see both models from one request to the next.
- `entity`: an entity's key hash decides, so it always sees one model. The share is quantised by
  the entities in the traffic: with 20 entities the lowest bucket may lie above 5 %, and a 5 %
  canary then gets nothing (issue 17).
- `auto` (default): per request until the process has seen `min_sticky_entities` distinct
  entities, sticky from then on. With n entities the sticky share has a standard deviation of
  sqrt(w (1 - w) / n): 0.3 pp at 5 % over 5,000 entities, so within ±1 pp.
"""

from __future__ import annotations

import hashlib
import threading

BUCKETS = 10_000
AFFINITIES = ("request", "entity", "auto")


def bucket(entity: str) -> int:
    """A stable bucket in [0, BUCKETS) for an entity id (same on every worker and host)."""
    digest = hashlib.blake2b(entity.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % BUCKETS


def is_canary(entity: str, weight_percent: float) -> bool:
    """True for about `weight_percent` % of entities; growing the weight keeps earlier ones."""
    return bucket(entity) < weight_percent * (BUCKETS // 100)


class Router:
    """Per-process routing state: the request counter and the distinct entities seen so far."""

    def __init__(self, affinity: str = "auto", min_sticky_entities: int = 5000) -> None:
        if affinity not in AFFINITIES:
            raise ValueError(f"affinity must be one of {AFFINITIES}, got {affinity!r}")
        self.affinity = affinity
        self.min_sticky_entities = min_sticky_entities
        self._lock = threading.Lock()
        self._weight: float | None = None
        self._requests = 0
        self._canary = 0
        self._seen: set[str] = set()

    def configure(self, affinity: str, min_sticky_entities: int) -> None:
        """Take the policy the registry holds for the current release."""
        if affinity not in AFFINITIES:
            affinity = "auto"
        self.affinity, self.min_sticky_entities = affinity, max(int(min_sticky_entities), 1)

    def sticky(self) -> bool:
        """Whether routing is by entity now (always for `entity`, never for `request`)."""
        if self.affinity != "auto":
            return self.affinity == "entity"
        return len(self._seen) >= self.min_sticky_entities

    def route(self, entity_ids: list[str], weight_percent: float) -> list[bool]:
        """For each entity of one request, whether the canary answers it: per request all or
        none, sticky each by its own key."""
        if weight_percent <= 0 or weight_percent >= 100:
            return [weight_percent >= 100] * len(entity_ids)
        with self._lock:
            if self.affinity == "auto" and len(self._seen) < self.min_sticky_entities:
                self._seen.update(entity_ids)
            if self.sticky():
                return [is_canary(i, weight_percent) for i in entity_ids]
            if weight_percent != self._weight:  # a new step: the share restarts from zero
                self._weight, self._requests, self._canary = weight_percent, 0, 0
            self._requests += 1
            due = int(self._requests * weight_percent // 100)
            chosen = due > self._canary
            self._canary = max(self._canary, due)
            return [chosen] * len(entity_ids)

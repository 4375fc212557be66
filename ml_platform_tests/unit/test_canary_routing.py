"""Canary routing gives the canary its weight's share of requests at any entity count."""

from __future__ import annotations

import pytest

from ml_platform.serving.routing import Router, bucket, is_canary

ENTITIES = [str(i) for i in range(1, 21)]  # the demo's 20 store ids


def share(router: Router, entities: list[str], weight: float, requests: int) -> float:
    """Round-robin single-entity requests, as a steady client sends them."""
    routed = [router.route([entities[i % len(entities)]], weight)[0] for i in range(requests)]
    return sum(routed) / requests


@pytest.mark.parametrize("weight", [1, 5, 25, 50])
def test_per_request_routing_matches_the_weight_over_20_entities(weight):
    got = share(Router("request"), ENTITIES, weight, 2000)
    assert abs(got * 100 - weight) <= 1, got


def test_sticky_routing_over_20_entities_is_quantised_which_is_why_auto_routes_per_request():
    lowest = min(bucket(e) for e in ENTITIES) / 100  # percent at which the first entity joins
    assert lowest > 5  # issue 17: no demo entity reaches a 5 % canary
    assert share(Router("entity"), ENTITIES, 5, 2000) == 0
    assert 4 <= share(Router("auto", min_sticky_entities=5000), ENTITIES, 5, 2000) * 100 <= 6


def test_auto_turns_sticky_once_enough_entities_were_seen_and_stays_fair():
    many = [f"customer_id={i}" for i in range(6000)]
    router = Router("auto", min_sticky_entities=5000)
    assert not router.sticky()
    got = share(router, many, 5, 12_000)
    assert router.sticky()
    assert abs(got * 100 - 5) <= 1, got
    entity = next(e for e in many if is_canary(e, 5))
    assert all(router.route([entity], 5)) and all(router.route([entity], 25))  # it stays


def test_a_new_weight_starts_its_share_afresh_and_bounds_are_exact():
    router = Router("request")
    share(router, ENTITIES, 5, 7)  # 0 canary requests so far at 5 %
    assert share(router, ENTITIES, 25, 100) == 0.25  # no burst to catch up on the old step
    assert share(router, ENTITIES, 0, 50) == 0 and share(router, ENTITIES, 100, 50) == 1
    assert router.route(["a", "b", "c"], 100) == [True, True, True]
    with pytest.raises(ValueError, match="affinity"):
        Router("sometimes")

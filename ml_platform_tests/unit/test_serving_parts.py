"""The serving app's plain parts: routing, request validation, the SQLite store, the log."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ml_platform.resources.feature_store import SqliteFeatureStore, open_feature_store
from ml_platform.resources.prediction_log import PredictionLog, read_prediction_log
from ml_platform.serving.requests import RequestError, RequestParser
from ml_platform.serving.routing import bucket, is_canary

ENTITIES = [f"S{s:04d}|P{p:02d}" for s in range(1, 401) for p in range(1, 6)]


def test_routing_is_sticky_and_close_to_the_weight() -> None:
    assert [bucket(e) for e in ENTITIES] == [bucket(e) for e in ENTITIES]
    for weight in (5, 25, 50):
        share = sum(is_canary(e, weight) for e in ENTITIES) / len(ENTITIES)
        assert abs(share - weight / 100) < 0.03, (weight, share)
    assert not any(is_canary(e, 0) for e in ENTITIES)
    assert all(is_canary(e, 100) for e in ENTITIES)


def test_raising_the_weight_keeps_every_entity_already_on_the_canary() -> None:
    at_5 = {e for e in ENTITIES if is_canary(e, 5)}
    at_25 = {e for e in ENTITIES if is_canary(e, 25)}
    assert at_5 and at_5 <= at_25


@pytest.fixture
def parser(spec) -> RequestParser:
    return RequestParser(spec)


def test_a_valid_body_gives_plain_entity_dicts(parser: RequestParser) -> None:
    body = b'{"entities": [{"store_id": "S0001", "product_id": "P01"}]}'
    assert parser.parse(body) == [{"store_id": "S0001", "product_id": "P01"}]


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        (b"{", 400, None),
        (b"\xff\xfe", 400, None),
        (b'{"entities": [{"store_id": null, "product_id": "P01"}]}', 422, "entities.0.store_id"),
        (
            b'{"entities": [{"store_id": "S1", "product_id": ["P01"]}]}',
            422,
            "entities.0.product_id",
        ),
        (b'{"entities": "S0001"}', 422, "entities"),
        (b'{"entities": [{"store_id": "' + b"x" * 200 + b'", "product_id": "P"}]}', 422, None),
        (b'{"entities": [{"store_id": "S1", "product_id": "P1"}], "debug": true}', 422, "debug"),
    ],
)
def test_bad_bodies_name_what_is_wrong(
    parser: RequestParser, body: bytes, status: int, field: str | None
) -> None:
    with pytest.raises(RequestError) as caught:
        parser.parse(body)
    assert caught.value.status == status
    if field:
        assert field in [e["loc"] for e in caught.value.payload()["errors"]]


def test_too_many_entities_is_413_before_and_after_parsing(parser: RequestParser) -> None:
    one = {"store_id": "S0001", "product_id": "P01"}
    body = json.dumps({"entities": [one] * (parser.max_entities + 1)}).encode()
    with pytest.raises(RequestError) as caught:
        parser.parse(body)
    assert caught.value.status == 413 and caught.value.error == "too_many_entities"
    with pytest.raises(RequestError) as caught:
        parser.parse(b" " * (parser.max_bytes + 1))
    assert caught.value.status == 413 and caught.value.error == "too_large"


def test_sqlite_store_keeps_the_newest_day_and_reads_in_order(tmp_path: Path) -> None:
    store = open_feature_store(f"sqlite:///{tmp_path / 'online.sqlite'}")
    assert isinstance(store, SqliteFeatureStore)
    store.upsert("p", [("a", "2024-01-02", '{"v": 2}'), ("b", "2024-01-01", '{"v": 1}')])
    store.upsert("p", [("a", "2024-01-01", '{"v": "old"}')])  # a late backfill
    ids = ["b", "missing", "a"] + [f"x{i}" for i in range(2000)]  # past SQLite's 999 params
    assert store.get("p", ids)[:3] == ['{"v": 1}', None, '{"v": 2}']
    assert store.get("other", ["a"]) == [None]
    store.close()
    reader = open_feature_store(f"sqlite:///{tmp_path / 'online.sqlite'}", read_only=True)
    assert reader.get("p", ["a"]) == ['{"v": 2}']
    reader.close()


def test_unknown_store_urls_are_refused() -> None:
    with pytest.raises(ValueError, match="unsupported online store URL"):
        open_feature_store("postgres://127.0.0.1/x")


def test_prediction_log_reads_back_and_skips_a_torn_line(tmp_path: Path) -> None:
    log = PredictionLog(tmp_path)
    log.write("p", [{"request_id": "r1", "prediction": 1.5}, {"request_id": "r2", "prediction": 2}])
    log.close()
    (path,) = list(tmp_path.glob("p/*/*.jsonl"))
    with path.open("ab") as handle:
        handle.write(b'{"request_id": "r3", "predic')  # a crash mid-write
    frame = read_prediction_log(tmp_path, "p")
    assert frame["request_id"].tolist() == ["r1", "r2"]
    assert read_prediction_log(tmp_path, "nothing").empty


def test_a_store_that_cannot_answer_yet_says_so(tmp_path: Path) -> None:
    """The server may start before `features` ran, or lose Redis: a 503 reason, not a crash."""
    from ml_platform.resources.feature_store import StoreUnavailableError

    reader = open_feature_store(f"sqlite:///{tmp_path / 'absent.sqlite'}", read_only=True)
    with pytest.raises(StoreUnavailableError, match="materialise `features`"):
        reader.get("p", ["a"])
    writer = open_feature_store(f"sqlite:///{tmp_path / 'absent.sqlite'}")
    writer.upsert("p", [("a", "2024-01-01", "{}")])
    assert reader.get("p", ["a"]) == ["{}"]  # it opens once the file exists
    unreachable = open_feature_store("redis://127.0.0.1:1/0")
    with pytest.raises(StoreUnavailableError, match="Redis online store is unavailable"):
        unreachable.get("p", ["a"])

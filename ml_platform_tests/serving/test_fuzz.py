"""An API fuzz of `/predict` from the app's own OpenAPI schema (schemathesis), against the real
`ml-platform serve` of the shared serving fixture.

Generated bodies, valid and invalid (wrong types, missing and extra fields, empty lists, huge
strings, odd path values and headers), must never get a 5xx or a traceback; every refusal is a
JSON error naming what was wrong; the workers' memory stays bounded.
"""

from __future__ import annotations

import psutil
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

EXAMPLES = 80  # per generation mode; the whole fuzz takes seconds
MAX_RSS_GROWTH = 150 * 2**20


def _server_rss(url: str) -> int:
    """Resident memory of the processes that serve `url`'s port (uvicorn's workers included)."""
    port = int(url.rsplit(":", 1)[1])
    listeners = {
        c.pid for c in psutil.net_connections("tcp") if c.laddr and c.laddr.port == port and c.pid
    }
    processes = {psutil.Process(pid) for pid in listeners}
    for process in list(processes):
        processes.update(process.children(recursive=True))
    return sum(p.memory_info().rss for p in processes)


@pytest.fixture(scope="module")
def predict_api(server: str):
    schema = schemathesis.openapi.from_url(f"{server}/openapi.json")
    return schema.include(path_regex="/predict$")


@pytest.fixture(scope="module")
def memory(server: str):
    before = _server_rss(server)
    yield
    growth = _server_rss(server) - before
    assert growth < MAX_RSS_GROWTH, f"serving processes grew {growth / 2**20:.0f} MB under fuzz"


api = schemathesis.pytest.from_fixture("predict_api")


@api.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_predict_never_answers_a_server_error_or_a_traceback(case, server: str, memory) -> None:
    response = case.call(base_url=server, timeout=15)
    case.validate_response(response, checks=[not_a_server_error])
    assert "Traceback" not in response.text
    if response.status_code >= 400:
        body = response.json()
        assert isinstance(body, dict) and body.get("error"), response.text[:500]


def test_the_schema_documents_the_body_the_parser_reads(predict_api) -> None:
    operation = next(iter(predict_api.get_all_operations())).ok()
    body = operation.definition.raw["requestBody"]["content"]["application/json"]["schema"]
    shapes = {tuple(s["properties"]["entities"]["items"]["required"]) for s in body["anyOf"]}
    assert ("store_id", "product_id") in shapes

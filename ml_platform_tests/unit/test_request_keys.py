"""Entity keys in a /predict body follow the contract's dtype: an int key takes 5 or "5"."""

from __future__ import annotations

import pytest
import yaml

from ml_platform.resources.feature_store import entity_id
from ml_platform.serving.requests import RequestError, RequestParser
from ml_platform.specs import SPEC_DIR, PipelineSpec


@pytest.fixture(scope="module")
def hourly() -> PipelineSpec:
    """An hourly series: one entity per station and hour of the day (an int key)."""
    raw = yaml.safe_load((SPEC_DIR / "customer_churn.yaml").read_text())
    raw["contract"]["columns"]["hr"] = {"dtype": "int", "ge": 0, "le": 23}
    raw["entity_keys"] = ["customer_id", "hr"]
    raw["features"]["passthrough"] = [*raw["features"]["passthrough"], "hr"]  # a key as a feature
    raw["model"]["params_file"] = None
    return PipelineSpec.model_validate(raw)


def test_int_keys_take_an_integer_or_its_digits_and_mean_one_entity(hourly):
    parser = RequestParser(hourly)
    body = b'{"entities": [{"customer_id": "C000001", "hr": 5}, '
    body += b'{"customer_id": "C000001", "hr": "05"}]}'
    first, second = parser.parse(body)
    assert first == second == {"customer_id": "C000001", "hr": 5}
    assert entity_id(hourly, first) == entity_id(hourly, {"customer_id": "C000001", "hr": 5})


@pytest.mark.parametrize(
    "value", ["true", "5.5", '"x"', '"5 "', "99999999999999999999999", "null", "[5]"]
)
def test_int_keys_refuse_anything_else_with_a_422_that_shows_the_shape(hourly, value):
    body = f'{{"entities": [{{"customer_id": "C000001", "hr": {value}}}]}}'.encode()
    with pytest.raises(RequestError) as caught:
        RequestParser(hourly).parse(body)
    assert caught.value.status == 422
    assert '"hr": <integer>' in caught.value.detail


def test_str_keys_stay_strict_strings(hourly):
    with pytest.raises(RequestError) as caught:
        RequestParser(hourly).parse(b'{"entities": [{"customer_id": 1, "hr": 1}]}')
    assert caught.value.status == 422 and '"customer_id": "<string>"' in caught.value.detail

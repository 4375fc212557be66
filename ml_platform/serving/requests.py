"""Validate a `/predict` body with pydantic, straight from bytes, into plain entity dicts.

A per-spec TypedDict schema (strict strings for every entity key, no unknown fields) validated
with `TypeAdapter.validate_json` is both strict and cheap: no intermediate objects, no coercion
of `5` into `"5"`.
"""

from __future__ import annotations

import re
import uuid
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import ConfigDict, Field, StringConstraints, TypeAdapter, ValidationError, with_config
from typing_extensions import TypedDict

from ml_platform.specs import PipelineSpec

if TYPE_CHECKING:
    from starlette.requests import Request

MAX_KEY_CHARS = 128
REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
BYTES_PER_ENTITY = 512  # generous: a body larger than limit x this is refused unread


class RequestError(Exception):
    """A client error with its HTTP status and a JSON body that says what to fix."""

    def __init__(self, status: int, error: str, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.status = status
        self.error = error
        self.detail = detail
        self.extra = extra

    def payload(self) -> dict[str, Any]:
        return {"error": self.error, "detail": self.detail, **self.extra}


class RequestParser:
    """Parses `{"entities": [{key: value, ...}, ...]}` for one pipeline."""

    def __init__(self, spec: PipelineSpec) -> None:
        self.keys = list(spec.entity_keys)
        self.max_entities = spec.deployment.max_batch_entities
        self.max_bytes = self.max_entities * BYTES_PER_ENTITY + 1024
        text = Annotated[str, StringConstraints(min_length=1, max_length=MAX_KEY_CHARS)]
        # An int key (the hour of an hourly series) takes a JSON integer or its digits as text.
        digits = Annotated[str, StringConstraints(pattern=r"^-?[0-9]{1,18}$")]
        number = Annotated[int, Field(ge=-(10**18), le=10**18)]
        columns = spec.contract.columns
        self.int_keys = [k for k in self.keys if columns[k].dtype == "int"]
        kinds = {k: number | digits if k in self.int_keys else text for k in self.keys}
        strict = ConfigDict(extra="forbid", strict=True)
        entity = with_config(strict)(TypedDict(f"{spec.name}_entity", kinds))
        body = with_config(ConfigDict(extra="forbid"))(
            TypedDict(
                f"{spec.name}_request", {"entities": Annotated[list[entity], Field(min_length=1)]}
            )
        )
        self.adapter = TypeAdapter(body)
        example = ", ".join(
            f'"{k}": {"<integer>" if k in self.int_keys else chr(34) + "<string>" + chr(34)}'
            for k in self.keys
        )
        limit = f"with 1 to {self.max_entities} entities"
        self.shape = '{"entities": [{' + example + "}, ...]} " + limit

    def json_schema(self) -> dict[str, Any]:
        """The body `parse` accepts, as JSON Schema for the app's OpenAPI document (clients and
        the schemathesis fuzz read it); `parse` stays the one that decides."""
        text = {"type": "string", "minLength": 1, "maxLength": MAX_KEY_CHARS}
        integer = {
            "anyOf": [
                {"type": "integer", "minimum": -(10**18), "maximum": 10**18},
                {"type": "string", "pattern": r"^-?[0-9]{1,18}$"},
            ]
        }
        entity = {
            "type": "object",
            "additionalProperties": False,
            "required": self.keys,
            "properties": {k: integer if k in self.int_keys else text for k in self.keys},
        }
        entities = {"type": "array", "minItems": 1, "maxItems": self.max_entities, "items": entity}
        return {
            "type": "object",
            "additionalProperties": False,
            "required": ["entities"],
            "properties": {"entities": entities},
        }

    def too_large(self, size: int | str) -> RequestError:
        return RequestError(
            413,
            "too_large",
            f"request body is {size} bytes; the limit is {self.max_bytes}"
            f" ({self.max_entities} entities)",
        )

    async def read_body(self, request: Request) -> bytes:
        """The body, refused with 413 before it is read when `Content-Length` is over the limit,
        and as soon as the running total passes it when the length is unknown (chunked): never
        more than the limit plus one chunk is held."""
        declared = request.headers.get("content-length")
        if declared is not None:
            if not declared.isascii() or not declared.isdigit():
                raise RequestError(400, "bad_content_length", "Content-Length is not a number")
            if int(declared) > self.max_bytes:
                raise self.too_large(int(declared))
        chunks: list[bytes] = []
        total = 0
        async for chunk in request.stream():
            total += len(chunk)
            if total > self.max_bytes:
                raise self.too_large(f"over {self.max_bytes}")
            chunks.append(chunk)
        return b"".join(chunks)

    def parse(self, raw: bytes) -> list[dict[str, str]]:
        if len(raw) > self.max_bytes:
            raise self.too_large(len(raw))
        try:
            entities = self.adapter.validate_json(raw)["entities"]
        except ValidationError as exc:
            errors = exc.errors(include_url=False, include_input=False)
            if any(e["type"] == "json_invalid" for e in errors):
                raise RequestError(
                    400, "malformed_json", f"body is not valid JSON: {errors[0]['msg']}"
                ) from None
            raise RequestError(
                422,
                "invalid_request",
                f"expected {self.shape}",
                errors=[
                    {"loc": ".".join(map(str, e["loc"])), "msg": e["msg"]} for e in errors[:20]
                ],
            ) from None
        if len(entities) > self.max_entities:
            raise RequestError(
                413,
                "too_many_entities",
                f"{len(entities)} entities in one request; the limit is {self.max_entities}",
            )
        for entity in entities if self.int_keys else ():
            for key in self.int_keys:  # one spelling per entity: "05" and 5 are the same hour
                entity[key] = int(entity[key])
        return entities


def request_id(header: str | None) -> str:
    """The caller's `x-request-id` when it is short and plain (it is copied into every prediction
    log record), else a fresh one."""
    if header is not None and REQUEST_ID.fullmatch(header):
        return header
    return uuid.uuid4().hex

"""`ml-platform serve`: real-time predictions from the online feature store and the registry.

- `POST /v1/{pipeline}/predict` looks up each entity's latest online features and predicts with
  the variant its key hash routes it to (champion, or the canary for the canary's share).
- Concurrent requests are micro-batched: requests that arrive while a batch is being predicted
  are looked up and predicted together in the next one, at no added latency when idle.
- Bad requests get 4xx JSON with a reason; a failing canary falls back to the champion, so a bad
  release costs accuracy metrics, never a failed request.
"""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import asynccontextmanager
from pathlib import Path

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.requests import ClientDisconnect

from ml_platform.layout import StateLayout
from ml_platform.resources.feature_store import StoreUnavailableError, open_feature_store
from ml_platform.resources.model_loader import registry_client
from ml_platform.resources.prediction_log import PredictionLog
from ml_platform.serving.batching import (
    BatchPredictor,
    NotReadyError,
    PredictJob,
    UnknownEntitiesError,
)
from ml_platform.serving.deployment import ModelSlots, Reloader
from ml_platform.serving.metrics import ServingMetrics
from ml_platform.serving.requests import RequestError, RequestParser, request_id
from ml_platform.specs import PipelineSpec

log = logging.getLogger("ml_platform.serving")


def json_response(payload: object, status: int = 200, request_id: str | None = None) -> Response:
    headers = {"x-request-id": request_id} if request_id else None
    return Response(
        orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY),
        status_code=status,
        media_type="application/json",
        headers=headers,
    )


class ServedPipeline:
    """One pipeline's request parser, models and micro-batcher."""

    def __init__(self, spec: PipelineSpec, slots: ModelSlots, predictor: BatchPredictor) -> None:
        self.spec = spec
        self.slots = slots
        self.parser = RequestParser(spec)
        self.predictor = predictor
        self._pending: list[PredictJob] = []
        self._scheduled = False

    async def submit(self, job: PredictJob) -> list[dict]:
        """Queue a job; all jobs queued before the loop gets round to it go in one batch."""
        loop = asyncio.get_running_loop()
        job.future = loop.create_future()
        self._pending.append(job)
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        return await job.future

    def _flush(self) -> None:
        jobs, self._pending, self._scheduled = self._pending, [], False
        self.predictor.run(self.slots.snapshot, jobs)


def create_app(
    root: Path,
    specs: list[PipelineSpec],
    tracking_uri: str,
    online_store_url: str,
    reload_seconds: float = 5.0,
    body_timeout_seconds: float = 10.0,
) -> FastAPI:
    """The serving app for `specs`; state lives under `root/.ml_platform/serving`."""
    client = registry_client(tracking_uri)
    metrics = ServingMetrics()
    prediction_log = PredictionLog(StateLayout(root).predictions)
    store = open_feature_store(online_store_url, read_only=online_store_url.startswith("sqlite"))
    served = {
        spec.name: ServedPipeline(
            spec,
            ModelSlots(spec, client),
            BatchPredictor(spec, store, metrics, prediction_log),
        )
        for spec in specs
    }
    reloader = Reloader([p.slots for p in served.values()], reload_seconds)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await asyncio.get_running_loop().run_in_executor(None, reloader.refresh_all)
        reloader.start()
        yield
        reloader.stop()
        prediction_log.close()
        store.close()

    app = FastAPI(title="ml_platform serving", version="1", lifespan=lifespan)
    app.state.served = served
    app.state.reloader = reloader

    # The body is read by the parser, not by FastAPI: its schema is documented here.
    body = {"anyOf": [p.parser.json_schema() for p in served.values()]} if served else {}
    documented = {
        "requestBody": {"required": True, "content": {"application/json": {"schema": body}}}
    }

    @app.post("/v1/{pipeline}/predict", openapi_extra=documented)
    async def predict(pipeline: str, request: Request) -> Response:
        started = time.perf_counter()
        rid = request_id(request.headers.get("x-request-id"))
        target = served.get(pipeline)
        if target is None:
            metrics.client_error("unknown", 404)
            return json_response(
                {
                    "error": "unknown_pipeline",
                    "detail": f"no pipeline named {pipeline!r}",
                    "pipelines": sorted(served),
                },
                404,
                rid,
            )
        try:
            async with asyncio.timeout(body_timeout_seconds):
                raw = await target.parser.read_body(request)
            entities = target.parser.parse(raw)
            predictions = await target.submit(PredictJob(entities, rid))
        except ClientDisconnect:
            # Nobody is left to answer: one plain line, not an unhandled error with a traceback.
            log.info("client disconnected before its /%s/predict body was read (%s)", pipeline, rid)
            return Response(status_code=499)
        except TimeoutError:
            metrics.client_error(pipeline, 408)
            log.info(
                "a /%s/predict body took over %ss to arrive (%s)",
                pipeline,
                body_timeout_seconds,
                rid,
            )
            return json_response(
                {
                    "error": "request_timeout",
                    "detail": f"the body did not arrive within {body_timeout_seconds}s",
                },
                408,
                rid,
            )
        except RequestError as exc:
            metrics.client_error(pipeline, exc.status)
            return json_response(exc.payload(), exc.status, rid)
        except UnknownEntitiesError as exc:
            metrics.client_error(pipeline, 404)
            return json_response(exc.payload(), 404, rid)
        except (NotReadyError, StoreUnavailableError) as exc:
            return json_response({"error": "not_ready", "detail": str(exc)}, 503, rid)
        metrics.observe_latency(pipeline, predictions, time.perf_counter() - started)
        return json_response(
            {"pipeline": pipeline, "request_id": rid, "predictions": predictions},
            200,
            rid,
        )

    default_openapi = app.openapi

    def openapi() -> dict:
        """FastAPI's document, with the served pipelines as the path parameter's values."""
        schema = default_openapi()  # cached by FastAPI: this edit is made once
        for param in schema["paths"]["/v1/{pipeline}/predict"]["post"].get("parameters", []):
            if param["name"] == "pipeline":
                param["schema"]["enum"] = sorted(served)
        return schema

    app.openapi = openapi

    @app.get("/healthz")
    async def healthz() -> Response:
        return json_response({"status": "ok"})

    @app.get("/readyz")
    async def readyz() -> Response:
        states = {
            name: {**p.slots.snapshot.describe(), "last_error": p.slots.last_error}
            for name, p in served.items()
        }
        ready = all(p.slots.ready for p in served.values()) and any(
            p.slots.snapshot.champion is not None for p in served.values()
        )
        try:  # a store that cannot be read fails every request: not ready
            await asyncio.get_running_loop().run_in_executor(None, store.probe)
            store_state = {"ok": True}
        except Exception as exc:
            ready = False
            store_state = {"ok": False, "error": str(exc)}
        return json_response(
            {"ready": ready, "pipelines": states, "online_store": store_state},
            200 if ready else 503,
        )

    @app.get("/metrics")
    async def prometheus_metrics() -> Response:
        body, content_type = metrics.exposition()
        return Response(body, media_type=content_type)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s", request.url.path)
        return json_response({"error": "internal", "detail": type(exc).__name__}, 500)

    return app


def create_app_from_env() -> FastAPI:
    """The uvicorn factory used by `ml-platform serve` (every worker builds its own app)."""
    from ml_platform.settings import (
        default_root,
        mlflow_uri,
        online_store_url,
        serve_body_timeout_seconds,
        serve_reload_seconds,
        spec_dir_from_env,
    )
    from ml_platform.specs import load_specs_isolated

    root = default_root()
    _limit_native_threads()
    specs, errors = load_specs_isolated(spec_dir_from_env(), root)
    for error in errors.values():  # one team's broken spec never takes the others offline
        log.error("not serving a pipeline whose spec is broken: %s", error)
    return create_app(
        root,
        specs,
        mlflow_uri(root),
        online_store_url(root),
        serve_reload_seconds(),
        serve_body_timeout_seconds(),
    )


def _limit_native_threads() -> None:
    """One BLAS/OpenMP thread per worker: workers are the parallelism, not native pools."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)

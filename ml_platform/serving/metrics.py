"""Prometheus metrics per pipeline, variant and model version, across all worker processes.

With several uvicorn workers each process writes its samples to `PROMETHEUS_MULTIPROC_DIR`
(`ml-platform serve` sets and empties it at start) and `/metrics` aggregates them, so a scrape
sees the whole server whichever worker answers it.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable
from typing import Any, TypeVar

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)

from ml_platform.core.canary import (
    ERRORS,
    LATENCY,
    LATENCY_BUCKETS,
    PREDICTION,
    PREDICTION_BUCKETS,
    REQUESTS,
)
from ml_platform.settings import prometheus_multiproc_dir

log = logging.getLogger("ml_platform.serving")
LABELS = ("pipeline", "variant", "version")
F = TypeVar("F", bound=Callable[..., Any])


def _never_fails_a_request(method: F) -> F:
    """Metrics describe requests; they must never fail one. In multiprocess mode each sample
    lives in a file under `PROMETHEUS_MULTIPROC_DIR`: if that folder is removed under a running
    server (a cleanup, a `make reset`), it is made again and the call retried once; if it still
    fails, the sample is dropped with a warning and the request goes on."""

    @functools.wraps(method)
    def guarded(self: ServingMetrics, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except (OSError, ValueError) as exc:
            folder = prometheus_multiproc_dir()
            if folder is None:
                raise
            try:
                os.makedirs(folder, mode=0o700, exist_ok=True)
                self._children.clear()  # their files went with the folder
                return method(self, *args, **kwargs)
            except (OSError, ValueError):
                log.warning("metrics sample dropped (%s): %s", method.__name__, exc)
                return None

    return guarded  # type: ignore[return-value]


SHADOW = "shadow"  # variant label of champion predictions made for canary-routed entities


class ServingMetrics:
    """The app's metric families, on a registry of its own (several apps can live in one test)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.multiprocess = prometheus_multiproc_dir() is not None
        reg = self.registry
        self.requests = Counter(
            REQUESTS.removesuffix("_total"),
            "Requests with entities routed to the variant",
            LABELS,
            registry=reg,
        )
        self.errors = Counter(
            ERRORS.removesuffix("_total"),
            "Requests where the variant failed (the champion answered instead)",
            LABELS,
            registry=reg,
        )
        self.latency = Histogram(
            LATENCY,
            "Request latency, by the variants that served it",
            LABELS,
            buckets=LATENCY_BUCKETS,
            registry=reg,
        )
        self.predictions = Histogram(
            PREDICTION, "Predicted values", LABELS, buckets=PREDICTION_BUCKETS, registry=reg
        )
        self.client_errors = Counter(
            "ml_platform_client_errors",
            "Requests refused with a 4xx",
            ("pipeline", "status"),
            registry=reg,
        )
        self._children: dict[tuple, tuple] = {}

    def _series(self, pipeline: str, variant: str, version: int) -> tuple:
        key = (pipeline, variant, version)
        series = self._children.get(key)
        if series is None:
            labels = (pipeline, variant, str(version))
            series = (
                self.requests.labels(*labels),
                self.errors.labels(*labels),
                self.latency.labels(*labels),
                self.predictions.labels(*labels),
            )
            self._children[key] = series
        return series

    @_never_fails_a_request
    def record_batch(
        self, pipeline: str, variant: str, version: int, values, failed: bool = False
    ) -> None:
        """One request's predictions by one variant (or its failure, when `failed`)."""
        requests, errors, _, predictions = self._series(pipeline, variant, version)
        requests.inc()
        if failed:
            errors.inc()
            return
        for value in values:
            predictions.observe(value)

    @_never_fails_a_request
    def record_shadow(self, pipeline: str, version: int, values) -> None:
        """Champion predictions for canary-routed entities (not served; for the analysis)."""
        series = self._series(pipeline, SHADOW, version)[3]
        for value in values:
            series.observe(value)

    @_never_fails_a_request
    def observe_latency(self, pipeline: str, predictions: list[dict], seconds: float) -> None:
        served = {(p["variant"], p["model_version"]) for p in predictions}
        for variant, version in served:
            self._series(pipeline, variant, version)[2].observe(seconds)

    @_never_fails_a_request
    def client_error(self, pipeline: str, status: int) -> None:
        self.client_errors.labels(pipeline, str(status)).inc()

    def exposition(self) -> tuple[bytes, str]:
        if self.multiprocess:
            from prometheus_client import multiprocess

            os.makedirs(prometheus_multiproc_dir() or ".", mode=0o700, exist_ok=True)
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
